"""The fetch ledger: events faust fetched and never delivered are handed back, holes never fetched are not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from faust.types import TP

from streams.fetch_ledger import FetchLedger

pytestmark = pytest.mark.unit

P0, P1 = TP("events", 0), TP("events", 1)


def _ledger(*fetched: tuple[TP, int], stall_s: float = 30) -> FetchLedger:
    ledger = FetchLedger("events", stall_s)
    ledger.assigned([P0, P1])
    for tp, offset in fetched:
        ledger.fetched(tp, SimpleNamespace(offset=offset), now=0)
    return ledger


def _offsets(messages) -> list[int]:
    return [m.offset for m in messages]


def test_in_order_deliveries_hand_nothing_back():
    ledger = _ledger(*((P0, o) for o in range(10)))
    assert all(ledger.delivered(P0, o, now=1) == [] for o in range(10))
    assert ledger.waiting() == 0


def test_a_dropped_head_comes_back_with_the_first_delivery_after_it():
    ledger = _ledger(*((P0, o) for o in range(90, 95)))
    assert _offsets(ledger.delivered(P0, 91, now=1)) == [90]  # faust issue 606: committed past 90 otherwise
    assert ledger.delivered(P0, 92, now=1) == []


def test_dropped_events_in_the_middle_come_back_oldest_first_once():
    ledger = _ledger(*((P0, o) for o in range(20)))
    for o in range(5):
        ledger.delivered(P0, o, now=1)
    assert _offsets(ledger.delivered(P0, 12, now=1)) == list(range(5, 12))
    assert ledger.delivered(P0, 13, now=1) == []
    assert ledger.delivered(P0, 7, now=1) == []  # delivered late after all: a replay, nothing more
    assert _offsets(ledger.delivered(P0, 19, now=1)) == list(range(14, 19))


def test_offsets_never_fetched_are_not_holes_to_fill():
    # transaction markers and compacted records leave offsets that the consumer never returns
    ledger = _ledger((P0, 0), (P0, 1), (P0, 3), (P0, 10_000))
    for o in (0, 1, 3, 10_000):
        assert ledger.delivered(P0, o, now=1) == []


def test_partitions_and_other_topics_are_kept_apart():
    ledger = _ledger((P0, 0), (P1, 0), (P0, 1))
    ledger.fetched(TP("changelog", 0), SimpleNamespace(offset=0), now=0)
    assert _offsets(ledger.delivered(P0, 1, now=1)) == [0]
    assert ledger.waiting() == 1  # P1's, not delivered yet; the changelog's was never recorded


def test_a_revoked_partition_is_forgotten_and_an_assigned_one_starts_over():
    ledger = _ledger((P0, 0), (P0, 1), (P1, 5))
    ledger.revoked([P1])
    assert ledger.waiting() == 2
    ledger.delivered(P0, 0, now=1)
    ledger.assigned([P0])  # read again from the commit: anything fetched below the first delivery was dropped
    ledger.fetched(P0, SimpleNamespace(offset=2), now=2)
    assert _offsets(ledger.delivered(P0, 2, now=2)) == [1]


def test_a_tail_nothing_came_after_is_read_again_once_stall_s_has_passed_idle():
    ledger = _ledger((P0, 0), (P0, 1), (P0, 2), stall_s=10)
    ledger.batch_started()
    ledger.delivered(P0, 0, now=1)
    assert ledger.stalled(now=100) == {}  # a batch held (a store outage): its partitions wait, nothing is lost
    ledger.batch_done(now=100)
    assert ledger.stalled(now=109) == {}
    assert ledger.stalled(now=110) == {P0: 1}
    assert ledger.stalled(now=200) == {}  # reported once: the events are fetched again after the seek


def test_a_stall_forgets_replays_below_the_next_expected_offset():
    ledger = _ledger(*((P0, o) for o in range(3)), stall_s=10)
    for o in range(3):
        ledger.delivered(P0, o, now=1)
    ledger.fetched(P0, SimpleNamespace(offset=1), now=2)  # a replay faust discarded: already folded
    assert ledger.stalled(now=50) == {} and ledger.waiting() == 0
