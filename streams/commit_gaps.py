"""Commits held up for good by events faust dropped: found, and the dropped events read again.

faust commits a partition only up to its first offset not yet acknowledged. After a rebalance or a restart, faust
can drop events it had already fetched (it clears its stream queues when recovery ends) while it moves its read
position past them (faust-streaming issue 596): they are never delivered, never acknowledged, and the partition's
committed offset stops for good while the events after them are folded and acknowledged. Nothing is lost (the
uncommitted events are redelivered after the next restart), but the worker's lag grows for ever and the events are
counted again at every restart.

:class:`HeadGaps` tells such a partition from a busy one: its acknowledged offsets start past its committed offset,
and the two have not moved for ``stall_s`` (faust commits every second, and the agent acknowledges a partition's
events in order, so a head that is merely being processed moves or leaves no acknowledged offset behind it).
The feature worker then seeks the partition back to its committed offset: the dropped events are delivered again,
and the events after them are folded again and counted once (``streams.windows`` keeps event ids).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadGap:
    """Offsets ``committed`` .. ``first_acked - 1`` of a partition are not acknowledged, later ones are."""

    committed: int
    first_acked: int
    since: float  # when this gap was first seen (monotonic seconds)


class HeadGaps:
    """Follows each partition's head gap across checks; reports those that stayed the same for ``stall_s``."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._seen: dict[Hashable, HeadGap] = {}

    def stalled(
        self,
        committed: Mapping[Hashable, int | None],
        acked: Mapping[Hashable, Iterable[int]],
        now: float,
    ) -> dict[Hashable, HeadGap]:
        """The partitions whose head gap has not moved for ``stall_s`` as of ``now``.

        Args:
            committed: per partition, the offset committed (the next one to process), None before the first commit.
            acked: per partition, the offsets acknowledged and not committed yet.
            now: monotonic seconds.
        """
        current: dict[Hashable, HeadGap] = {}
        for tp, offsets in acked.items():
            head = committed.get(tp)
            first = min(offsets, default=None)
            if head is None or first is None or first <= head:
                continue
            seen = self._seen.get(tp)
            same = seen is not None and (seen.committed, seen.first_acked) == (head, first)
            current[tp] = seen if same else HeadGap(head, first, now)
        self._seen = current
        return {tp: gap for tp, gap in current.items() if now - gap.since >= self.stall_s}

    def forget(self, tp: Hashable) -> None:
        """Start over for ``tp`` (after it was read again)."""
        self._seen.pop(tp, None)
