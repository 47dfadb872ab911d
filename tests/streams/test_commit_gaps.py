"""Held-up commits: a partition whose first acknowledged offset stays past its committed one is found."""

from __future__ import annotations

import pytest

from streams.commit_gaps import HeadGap, HeadGaps

pytestmark = pytest.mark.unit


def test_a_gap_that_does_not_move_for_stall_s_is_reported_once_old_enough():
    gaps = HeadGaps(stall_s=30)
    committed, acked = {"p0": 100}, {"p0": [105, 106, 107]}
    assert gaps.stalled(committed, acked, now=0) == {}
    assert gaps.stalled(committed, {"p0": [105, 106, 107, 108]}, now=29) == {}  # more acked behind the same gap
    assert gaps.stalled(committed, acked, now=30) == {"p0": HeadGap(100, 105, since=0)}


def test_a_head_that_moves_or_closes_starts_over():
    gaps = HeadGaps(stall_s=30)
    gaps.stalled({"p0": 100}, {"p0": [105]}, now=0)
    assert gaps.stalled({"p0": 103}, {"p0": [105]}, now=31) == {}  # committed moved: a new gap, seen now
    assert gaps.stalled({"p0": 103}, {"p0": [105]}, now=60) == {}
    assert gaps.stalled({"p0": 103}, {"p0": [105]}, now=61) == {"p0": HeadGap(103, 105, since=31)}
    assert gaps.stalled({"p0": 106}, {"p0": []}, now=62) == {}  # committed past it: gone
    assert gaps.stalled({"p0": 106}, {"p0": [108]}, now=91) == {}  # a later gap is timed from its own start


@pytest.mark.parametrize(
    ("committed", "acked"),
    [
        ({"p0": 100}, {"p0": []}),  # nothing acknowledged beyond the committed offset: the head is being processed
        ({"p0": 100}, {"p0": [100, 101]}),  # contiguous: the next commit takes them
        ({"p0": None}, {"p0": [7, 8]}),  # nothing committed yet: no head to compare with
        ({}, {"p0": [7, 8]}),
    ],
)
def test_partitions_without_a_gap_are_never_reported(committed, acked):
    gaps = HeadGaps(stall_s=0)
    assert gaps.stalled(committed, acked, now=0) == {} and gaps.stalled(committed, acked, now=100) == {}


def test_forget_restarts_the_clock_of_a_partition_read_again():
    gaps = HeadGaps(stall_s=10)
    gaps.stalled({"p0": 1, "p1": 1}, {"p0": [5], "p1": [5]}, now=0)
    gaps.forget("p0")
    assert set(gaps.stalled({"p0": 1, "p1": 1}, {"p0": [5], "p1": [5]}, now=10)) == {"p1"}
