"""Sliding per-entity windows: counts, means, gaps, late and redelivered events, bounded state."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.windows import DAY, HOUR, MAX_EVENTS, EntityWindow, add_event, fingerprint

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
    assert state["ids"] == [fingerprint("b")]


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
    assert state["ids"][0] == fingerprint("50")


_EVENTS = st.lists(
    st.tuples(
        st.sampled_from([str(i) for i in range(40)]),  # repeated ids: redeliveries
        st.floats(T0, T0 + 3 * DAY),  # late events and events more than a day apart
        st.integers(0, 500),
    ),
    max_size=120,
)


@given(_EVENTS)
@settings(max_examples=200, deadline=None)
def test_a_window_folded_in_place_matches_folding_from_its_state_each_time(events):
    # The in-place window keeps its ids' set and its lengths' total across events and prunes; a window made from
    # the state before each event computes them afresh.
    window, state = EntityWindow(), None
    for event_id, at, length in events:
        state, expected = add_event(state, event_id, at, length)
        assert window.add(event_id, at, length) == expected
    assert window.state() == (state or EntityWindow().state())


def test_a_late_event_averages_only_its_own_day_of_the_window():
    window = EntityWindow()
    for i, length in enumerate([50, 100, 100, 1, 3]):
        window.add(str(i), T0 + i * 10 * HOUR, length)  # 0, 10, 20, 30, 40 h: the state keeps 20, 30 and 40 h
    # at 35 h its day holds 20 h, 30 h and itself, not the event at 40 h
    assert window.add("late", T0 + 35 * HOUR, 8) == {
        "msg_count_1h": 1,
        "msg_count_24h": 3,
        "mean_text_length": (100 + 1 + 8) / 3,
        "seconds_since_last_event": 5 * HOUR,
    }
    assert window.state()["ids"] == [fingerprint(i) for i in ("2", "3", "late", "4")]


def test_a_full_window_of_the_longest_ids_fits_in_one_kafka_record():
    # The whole state is one changelog record: Kafka's producers and brokers refuse records over 1 MB by default.
    state = None
    for i in range(MAX_EVENTS + 10):
        event_id = f"{i:06d}".ljust(128, "x")  # the longest id the contract takes
        state, _ = add_event(state, event_id, T0 + 86_399.123456 * i / MAX_EVENTS, 65_536)
    assert len(state["ids"]) == MAX_EVENTS
    assert len(json.dumps(state).encode()) < 600_000


def test_a_state_written_with_the_ids_themselves_counts_a_redelivered_event_once():
    old = {"ids": ["a", "b"], "times": [T0, T0 + 5], "lengths": [10, 12]}  # before fingerprints
    state, features = add_event(old, "b", T0 + 5, 12)
    assert features["msg_count_24h"] == 2
    state, features = add_event(state, "c", T0 + 9, 14)
    assert features["msg_count_24h"] == 3 and state["ids"] == [fingerprint(i) for i in ("a", "b", "c")]


def test_ids_that_are_not_valid_utf8_still_get_a_fingerprint():
    assert fingerprint("\ud800") != fingerprint("\ud801")  # lone surrogates: JSON may carry them
