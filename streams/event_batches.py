"""Batches taken straight from a faust channel's queue, for an agent that works a batch at a time.

faust's ``stream.take_events`` passes every event through the stream's iterator, its buffering generator and its
sensors, and ``stream.ack`` through them again; and an agent that waits on the queue for its next event is woken
for each one the consumer puts there. Together that was more than a third of the feature worker's faust floor (an
agent that only acknowledges, ``bench/feature_worker.py --bare driftloop``): ~37 µs per event, ~21 taken this way.
The conductor puts the events in the channel's queue either way, and faust's flow control (the partition paused
while the queue is near full and resumed as it drains, the queue cleared on a rebalance) lives in that queue and the
consumer, so an agent that takes from the queue keeps all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

# While a batch is open and the queue is empty, the agent looks again this often instead of being woken for each
# event put in the queue: a few hundred wake-ups a second at most, and at 20,000 events/s ~100 events a look, far
# below the queue's 4,096 (faust pauses a partition at 80 %).
POLL_S = 0.005


async def take_batch(queue: Any, max_events: int, within_s: float, poll_s: float = POLL_S) -> list:
    """The next batch of events from ``queue`` (a faust channel's ``ThrowableQueue``).

    Waits for one event, then takes those queued and those that arrive within ``within_s`` of it, looking every
    ``poll_s``, up to ``max_events``: full batches under load, one interval's worth when the rate is low. An error
    thrown to the channel is raised, as the stream's iterator raises it.
    """
    batch = [await queue.get()]
    deadline = time.monotonic() + within_s
    while len(batch) < max_events:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(remaining, poll_s))
    return batch


async def batches(queue: Any, max_events: int, within_s: float, poll_s: float = POLL_S) -> AsyncIterator[list]:
    """Batch after batch from ``queue`` (see :func:`take_batch`) until faust ends the channel: it throws
    ``StopAsyncIteration`` into the queue when the worker stops, and the stream's iterator ends there too. A batch
    being taken then is dropped unacknowledged: it is read again after the restart."""
    while True:
        try:
            batch = await take_batch(queue, max_events, within_s, poll_s)
        except StopAsyncIteration:
            return
        yield batch


def acknowledge(batch: Iterable, consumer: Any, inbound: dict) -> None:
    """Acknowledge each event of ``batch`` to ``consumer`` (faust's), as ``stream.ack`` does, so that its offset
    can be committed; ``inbound`` (faust's ``app.monitor.stream_inbound_time``) is told each partition is read, as
    the stream's sensors tell it: faust logs a partition its streams do not read as stuck."""
    now = time.monotonic()
    for event in batch:
        message = event.message
        message.ack(consumer)
        inbound[message.tp] = now
