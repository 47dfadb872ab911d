"""Sliding per-entity windows: counts, means, gaps, late and redelivered events, bounded state."""

from __future__ import annotations

import pytest

from streams.windows import DAY, HOUR, MAX_EVENTS, add_event

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


def _fold(events):
    state, features = None, []
    for event_id, at, length in events:
        state, f = add_event(state, event_id, at, length)
        features.append(f)
    return state, features


def test_counts_mean_and_gap_over_sliding_windows():
    _, f = _fold([("a", T0, 10), ("b", T0 + 600, 20), ("c", T0 + HOUR + 1, 30), ("d", T0 + DAY + 700, 40)])
    assert f[0] == {"msg_count_1h": 1, "msg_count_24h": 1, "mean_text_length": 10.0, "seconds_since_last_event": None}
    assert f[1]["msg_count_1h"] == 2 and f[1]["seconds_since_last_event"] == 600
    assert (
        f[2]["msg_count_1h"] == 2 and f[2]["msg_count_24h"] == 3
    )  # "a" is 1 h + 1 s old and f[2]["mean_text_length"] == 20.0
    # a day and 700 s after the first: "a" and "b" left the 24 h window, "c" is still in it
    assert f[3]["msg_count_24h"] == 2 and f[3]["mean_text_length"] == 35.0


def test_gap_longer_than_a_day_is_still_measured():
    state, f = _fold([("a", T0, 10), ("b", T0 + 3 * DAY, 20)])
    assert f[1] == {
        "msg_count_1h": 1,
        "msg_count_24h": 1,
        "mean_text_length": 20.0,
        "seconds_since_last_event": 3 * DAY,
    }
    assert state["ids"] == ["b"]


def test_late_event_is_placed_by_its_time():
    state, f = _fold([("a", T0, 10), ("b", T0 + 100, 10), ("late", T0 + 50, 40)])
    assert state["times"] == [T0, T0 + 50, T0 + 100]
    assert f[2]["msg_count_1h"] == 2 and f[2]["seconds_since_last_event"] == 50


def test_redelivered_event_counts_once_and_gives_the_same_features():
    state, f = _fold([("a", T0, 10), ("b", T0 + 5, 12)])
    again, f_again = add_event(state, "b", T0 + 5, 12)
    assert again == state and f_again == f[1]


def test_state_is_bounded():
    state = None
    for i in range(MAX_EVENTS + 50):
        state, _ = add_event(state, str(i), T0 + i * 0.001, 1)
    assert len(state["times"]) == len(state["ids"]) == MAX_EVENTS
    assert state["ids"][0] == "50"
