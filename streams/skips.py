"""Records a consumer skips: counted, logged at most once a minute per reason, never retried.

A label, drift event or model state that is invalid or unusable cannot go anywhere useful (there is no dead-letter
contract for them), and retrying it would stall its partition for good. Every consumer that reads such a topic
passes what it cannot use to :meth:`SkippedRecords.skip` and goes on::

    skipped = SkippedRecords()
    try:
        label = parse_label(msg.value())
    except InvalidRecord as exc:
        skipped.skip("labels-v1", exc.reason, offset=msg.offset())

Metric: ``driftloop_skipped_records_total{topic,reason}`` (``reason`` is the first words of the reason, so that the
label set stays small; the log line carries the whole reason).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0
_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_COUNTERS_LOCK = threading.Lock()


def _counter(registry: CollectorRegistry) -> Counter:
    # One counter per registry: prometheus_client refuses a second registration of the same name.
    with _COUNTERS_LOCK:
        counter = _COUNTERS.get(registry)
        if counter is None:
            counter = Counter(
                "driftloop_skipped_records",
                "Records skipped because they are invalid or unusable (never retried)",
                ["topic", "reason"],
                registry=registry,
            )
            _COUNTERS[registry] = counter
        return counter


def reason_label(reason: str) -> str:
    """A short, bounded label for a reason: its text up to the first ':' or ';', lower case, at most 48 chars."""
    head = re.split(r"[:;(]", reason, maxsplit=1)[0].strip().lower()
    head = re.sub(r"[^a-z0-9_ .-]+", "", head)[:48].strip()
    return head or "invalid"


class SkippedRecords:
    """Counts and logs skipped records of one process.

    Args:
        registry: where ``driftloop_skipped_records_total`` lives (default: prometheus_client's).
        log_every_s: the shortest time between two log lines of the same topic and reason.
        clock: a monotonic clock (injectable for tests).
    """

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, log_every_s: float = LOG_EVERY_S, clock=time.monotonic
    ) -> None:
        self._counter = _counter(registry)
        self._log_every_s = log_every_s
        self._clock = clock
        self._last_logged: dict[tuple[str, str], float] = {}
        self._since_logged: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def skip(self, topic: str, reason: str, **where: object) -> bool:
        """Count one skipped record; True when this call logged it (at most once per ``log_every_s``)."""
        label = reason_label(reason)
        self._counter.labels(topic, label).inc()
        key = (topic, label)
        now = self._clock()
        with self._lock:
            self._since_logged[key] = self._since_logged.get(key, 0) + 1
            last = self._last_logged.get(key)
            if last is not None and now - last < self._log_every_s:
                return False
            self._last_logged[key] = now
            count, self._since_logged[key] = self._since_logged[key], 0
        log.warning(
            "skipped a record of %s: %s", topic, reason[:500], extra={"topic": topic, "skipped": count, **where}
        )
        return True

    def count(self, topic: str, reason: str) -> float:
        """How many records of ``topic`` were skipped for ``reason`` (its label) so far."""
        return self._counter.labels(topic, reason_label(reason))._value.get()
