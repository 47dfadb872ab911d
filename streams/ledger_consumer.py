"""The feature worker's faust consumer: faust's own (aiokafka), showing ``app.fetch_ledger`` what it fetches, with
fetches the broker gathers over a window.

Installed per app (``app.transport.Consumer``); see :mod:`streams.fetch_ledger` for why.
"""

from __future__ import annotations

import time
from typing import Any

from faust.transport.drivers import aiokafka as aiokafka_driver

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


class LedgerConsumer(aiokafka_driver.Consumer):
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
