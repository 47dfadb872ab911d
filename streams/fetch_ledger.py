"""Events faust fetched and never delivered: found, folded in offset order, and acknowledged.

Around a rebalance faust can drop events it has fetched: its read position moves past them (faust-streaming issue
596), it abandons them while its flow is suspended, or it discards the rest of a fetched batch when its flow stops or
the group's generation changes. Such an event is never delivered to the agent. faust commits only acknowledged
offsets, but it takes a single missing offset at a partition's head for a compacted-topic gap (issue 606): a dropped
head event was committed unread, and the next events of its entity were folded without it. Events delivered after a
discarded run were folded before it. :class:`FetchLedger` keeps every events-topic record the broker returns
(``streams.ledger_consumer``) until the agent folds it:

- when an event is delivered, the records of its partition fetched at lower offsets and not delivered since the last
  one are handed back (:meth:`FetchLedger.delivered`): the agent folds them first, in offset order, and acknowledges
  them with its batch. Offsets never fetched (transaction markers, compacted records) are not holes to fill.
- a partition whose fetched events wait while the agent is idle for ``stall_s`` has lost its tail (no later event came
  to reveal the hole): :meth:`FetchLedger.stalled` names the offset to read that partition again from.

Plain logic: the caller passes the time (``time.monotonic()`` seconds).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any


class FetchLedger:
    """Per partition of ``topic``: the records fetched and not yet delivered, and the next offset expected."""

    def __init__(self, topic: str, stall_s: float) -> None:
        self.topic = topic
        self.stall_s = stall_s
        self._pending: dict[Hashable, dict[int, Any]] = {}
        self._next: dict[Hashable, int | None] = {}
        self._since: dict[Hashable, float] = {}  # last delivery, or the first fetch after it
        self._idle_since: float | None = 0.0  # None while the agent holds a batch

    def fetched(self, tp: Any, message: Any, now: float) -> None:
        """Record a record the broker returned (``message.offset``, ``.key``, ``.value``); other topics are ignored."""
        if tp.topic != self.topic:
            return
        pending = self._pending.get(tp)
        if pending is None:
            pending = self._pending[tp] = {}
        if not pending:
            self._since[tp] = now
        pending[message.offset] = message

    def delivered(self, tp: Hashable, offset: int, now: float) -> list[Any]:
        """Record the delivery of ``offset``; return the records fetched below it and never delivered, oldest first.

        Right after an assignment every undelivered message below ``offset`` counts; later, those from the next
        expected offset on. A delivery below the expected offset (a replay after a seek) moves nothing back.
        """
        self._since[tp] = now
        expected = self._next.get(tp)
        pending = self._pending.get(tp)
        missed: list[Any] = []
        if pending:
            if expected is None:
                below = [o for o in pending if o < offset]
            elif offset <= expected:
                below = []
            elif offset - expected <= len(pending):
                below = [o for o in range(expected, offset) if o in pending]
            else:
                below = [o for o in pending if expected <= o < offset]
            missed = [pending.pop(o) for o in sorted(below)]
            pending.pop(offset, None)
        if expected is None or offset >= expected:
            self._next[tp] = offset + 1
        return missed

    def batch_started(self) -> None:
        """The agent holds a batch (a push may wait out an outage): no partition is stalled meanwhile."""
        self._idle_since = None

    def batch_done(self, now: float) -> None:
        self._idle_since = now

    def stalled(self, now: float) -> dict[Hashable, int]:
        """Per partition whose fetched events have waited ``stall_s`` with the agent idle: the offset to read again.

        Forgets what it reports (the caller seeks there, and the events are fetched again) and what was fetched
        below the next expected offset (replays faust did not deliver: already folded).
        """
        if self._idle_since is None:
            return {}
        found = {}
        for tp, pending in self._pending.items():
            expected = self._next.get(tp)
            if expected is not None:
                for offset in [o for o in pending if o < expected]:
                    del pending[offset]
            if pending and now - max(self._since[tp], self._idle_since) >= self.stall_s:
                found[tp] = min(pending)
                pending.clear()
                self._since[tp] = now
        return found

    def assigned(self, tps: Iterable[Hashable]) -> None:
        """A new assignment: the consumer starts each partition again from its committed offset."""
        for tp in tps:
            self._next[tp] = None

    def revoked(self, tps: Iterable[Hashable]) -> None:
        """Partitions taken away: their events are the next owner's."""
        for tp in tps:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._since.pop(tp, None)

    def waiting(self) -> int:
        """How many fetched records wait for their delivery."""
        return sum(len(pending) for pending in self._pending.values())
