"""The feature worker's faust consumer: faust's own (aiokafka), showing ``app.fetch_ledger`` what it fetches, with
fetches the broker gathers over a window, and a cheaper hand-over of each record to the agent's stream.

Installed per app (``app.transport.Consumer``); see :mod:`streams.fetch_ledger` for why.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faust.transport.drivers import aiokafka as aiokafka_driver
from mode import Service
from mode.services import WaitResults

from streams.client import WINDOW_FETCH_MIN_BYTES

FETCH_MAX_WAIT_MS = 100


class WindowedFetchThread(aiokafka_driver.AIOKafkaConsumerThread):
    """faust's consumer thread, whose fetches the broker answers at ``WINDOW_FETCH_MIN_BYTES`` or after
    ``FETCH_MAX_WAIT_MS``: a fetch per window at moderate rates, not one per event (faust asks for 1 byte)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust passes no fetch_min_bytes; aiokafka reads both when the consumer starts (its fetcher is built then)
        consumer._fetch_min_bytes = WINDOW_FETCH_MIN_BYTES
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class EagerDelivery(Service):
    """A mode service whose ``wait_first(delivery, flow_stopped)`` runs ``delivery`` alone while it does not wait.

    faust's consumer hands each fetched record to the streams as ``wait_first(callback(message),
    suspend_flow.wait())``: mode makes a task of each, two more of the service's stopped and crashed events, and
    cancels the three that lose, 20 µs per record (the feature worker spent ~90 µs per event in all). Here the
    delivery runs as the only task; it almost always ends in its first step (the stream's buffer has room). One that
    waits (a full buffer) goes on through mode's own ``wait_first``, which cuts it short when the flow stops, as
    before. Both ways, a delivery takes its first step before any stop can cancel it, as in mode's.
    """

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if len(coros) != 2 or timeout is not None or not all(asyncio.iscoroutine(coro) for coro in coros):
            return await super().wait_first(*coros, timeout=timeout)
        delivery, flow_stopped = coros
        task = asyncio.ensure_future(delivery)
        try:
            await asyncio.sleep(0)  # the task takes its first step: the loop runs ready callbacks in order
        except BaseException:  # cancelled meanwhile (the consumer stops): as mode does, nothing is left running
            task.cancel()
            flow_stopped.close()
            raise
        if not task.done():
            return await super().wait_first(task, flow_stopped)
        flow_stopped.close()  # never awaited: closed, so that Python does not warn
        return WaitResults([delivery], [task.result()], False)


class LedgerConsumer(EagerDelivery, aiokafka_driver.Consumer):
    """Records every record the broker returns in the app's ``fetch_ledger``.

    Records are taken where aiokafka hands them over, before faust decides to deliver them: faust discards the rest of
    a fetched batch when its flow stops or the generation changes, while the read position has moved past them.
    """

    def _new_consumer_thread(self) -> WindowedFetchThread:
        return WindowedFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        records, active_partitions = await super()._wait_next_records(timeout)
        if records:
            ledger, now = self.app.fetch_ledger, time.monotonic()
            for tp, fetched in records.items():
                if tp.topic == ledger.topic:
                    for record in fetched:
                        ledger.fetched(tp, record, now)
        return records, active_partitions

    def ack_record(self, tp: Any, record: Any) -> None:
        """Acknowledge a record faust never delivered (folded from the ledger), so that commits can pass it."""
        self.ack(self._to_message(tp, record))
