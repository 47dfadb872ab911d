"""Batches taken from a faust channel's queue: how many, how long they wait, what an error or an ack does."""

from __future__ import annotations

import asyncio
import time

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streams.event_batches import acknowledge, batches, take_batch

pytestmark = pytest.mark.unit


class Event:
    def __init__(self, message: ConsumerMessage) -> None:
        self.message = message


class Consumer:
    """Records what faust's consumer is told: ``Message.ack`` calls ``consumer.ack(message)`` on the last ack, and
    the consumer marks the message acknowledged, as faust's does."""

    def __init__(self) -> None:
        self.acked: list[tuple[TP, int]] = []

    def ack(self, message: ConsumerMessage) -> bool:
        self.acked.append((message.tp, message.offset))
        message.acked = True
        return True


def _message(partition: int, offset: int) -> ConsumerMessage:
    tp = TP("events", partition)
    message = ConsumerMessage("events", partition, offset, 0.0, 0, [], b"k", b"v", None, 1, 1, tp)
    message.incref()  # the conductor's reference for the one channel
    return message


def _queue(*items) -> ThrowableQueue:
    flow = FlowControlEvent()
    flow.resume()
    queue = ThrowableQueue(maxsize=100, flow_control=flow)
    for item in items:
        queue.put_nowait(item)
    return queue


def test_a_full_batch_is_taken_at_once_and_the_rest_stays_queued():
    async def scenario():
        queue = _queue(*range(7))
        started = time.monotonic()
        batch = await take_batch(queue, max_events=5, within_s=30.0)
        return batch, time.monotonic() - started, queue.qsize()

    batch, waited, left = asyncio.run(scenario())
    assert batch == [0, 1, 2, 3, 4] and left == 2
    assert waited < 5.0  # did not wait out the interval


def test_a_batch_takes_what_arrives_within_the_interval_then_ends():
    async def scenario():
        queue = _queue("first")

        async def later():
            await asyncio.sleep(0.05)
            queue.put_nowait("second")

        producer = asyncio.create_task(later())
        started = time.monotonic()
        batch = await take_batch(queue, max_events=10, within_s=0.3)
        await producer
        return batch, time.monotonic() - started

    batch, waited = asyncio.run(scenario())
    assert batch == ["first", "second"]
    assert waited >= 0.29


def test_a_batch_waits_for_its_first_event_however_long():
    async def scenario():
        queue = _queue()
        taking = asyncio.create_task(take_batch(queue, max_events=10, within_s=0.01))
        await asyncio.sleep(0.1)
        assert not taking.done()
        queue.put_nowait("late")
        return await taking

    assert asyncio.run(scenario()) == ["late"]


def test_an_event_after_the_interval_is_the_next_batch_s():
    async def scenario():
        queue = _queue("first")
        batch = await take_batch(queue, max_events=10, within_s=0.02)
        queue.put_nowait("next")
        return batch, await take_batch(queue, max_events=10, within_s=0.0)

    assert asyncio.run(scenario()) == (["first"], ["next"])


def test_an_open_batch_is_not_woken_for_each_event_that_arrives():
    async def scenario():
        queue = _queue("first")
        waits = 0
        get = queue.get

        async def counted_get():
            nonlocal waits
            waits += 1
            return await get()

        queue.get = counted_get

        async def trickle():
            for _ in range(20):
                await asyncio.sleep(0.002)
                queue.put_nowait("event")

        producer = asyncio.create_task(trickle())
        # full at 21 events: ends then, however slowly a loaded machine runs the trickle
        batch = await take_batch(queue, max_events=21, within_s=60.0, poll_s=0.05)
        await producer
        return len(batch), waits

    assert asyncio.run(scenario()) == (21, 1)  # one wait, for the first event; the rest taken at each look


@pytest.mark.parametrize("queued", [0, 2])
def test_an_error_thrown_to_the_channel_is_raised(queued):
    async def scenario():
        queue = _queue(*range(queued))
        taking = asyncio.create_task(take_batch(queue, max_events=10, within_s=5.0))
        await asyncio.sleep(0.01)
        await queue.throw(ValueError("cannot decode"))
        with pytest.raises(ValueError, match="cannot decode"):
            await taking
        return True

    assert asyncio.run(scenario())


@pytest.mark.parametrize(
    ("within_s", "expected"),
    [
        (0.01, [[0, 1, 2], [3, 4]]),  # both batches closed before the end
        (5.0, [[0, 1, 2]]),  # [3, 4] still open at the end: dropped unacknowledged, read again after a restart
    ],
)
def test_batches_end_cleanly_when_faust_ends_the_channel(within_s, expected):
    async def scenario():
        queue = _queue(*range(5))
        taken = []

        async def agent():
            async for batch in batches(queue, max_events=3, within_s=within_s):
                taken.append(batch)

        running = asyncio.create_task(agent())
        async with asyncio.timeout(5.0):
            while len(taken) < len(expected) or not queue.empty():  # every event taken, the expected batches out
                await asyncio.sleep(0.005)
        await queue.throw(StopAsyncIteration())  # what faust throws into the channel when the worker stops
        await asyncio.wait_for(running, 2.0)  # ends, not raises
        return taken

    assert asyncio.run(scenario()) == expected


def test_each_event_is_acknowledged_to_the_consumer_and_its_partition_marked_read():
    consumer, inbound = Consumer(), {}
    batch = [Event(_message(0, 10)), Event(_message(1, 4)), Event(_message(0, 11))]
    before = time.monotonic()

    acknowledge(batch, consumer, inbound)

    assert consumer.acked == [(TP("events", 0), 10), (TP("events", 1), 4), (TP("events", 0), 11)]
    assert set(inbound) == {TP("events", 0), TP("events", 1)} and min(inbound.values()) >= before
    acknowledge(batch, consumer, inbound)  # acknowledged twice: faust counts it once
    assert len(consumer.acked) == 3
