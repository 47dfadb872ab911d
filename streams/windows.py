"""Per-entity sliding windows over event time: the pure logic behind the feature worker's faust table.

An entity's state is a JSON-able dict (it lives in a changelog-backed faust table): the ids, times and text lengths
of its events in the last 24 h, sorted by event time, capped at ``MAX_EVENTS``. Keeping the ids makes a redelivered
event (at-least-once) count once.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

HOUR = 3600.0
DAY = 24 * HOUR
MAX_EVENTS = 10_000

FEATURES = ("msg_count_1h", "msg_count_24h", "mean_text_length", "seconds_since_last_event")
#: How much history each feature looks back over. Until the store has observed that long, a feature's values are
#: smaller (counts) or less steady (means, gaps) than on a store in its stride, whatever the traffic does.
SPANS: dict[str, float] = {
    "msg_count_1h": HOUR,
    "msg_count_24h": DAY,
    "mean_text_length": DAY,
    "seconds_since_last_event": DAY,
}

Features = dict[str, float | int | None]


def empty_state() -> dict:
    return {"ids": [], "times": [], "lengths": []}


def add_event(state: dict | None, event_id: str, event_time: float, text_length: int) -> tuple[dict, Features]:
    """Fold one event (time in epoch seconds) into ``state``.

    Returns:
        The new state and the features of the windows that end at this event's time (a late event is placed by
        its time). An event already in the state is not counted again; its features are computed as before.
    """
    state = state or empty_state()
    ids, times, lengths = list(state["ids"]), list(state["times"]), list(state["lengths"])
    if event_id in ids:
        return state, features_at(times, lengths, event_time)
    index = bisect_right(times, event_time)
    ids.insert(index, event_id)
    times.insert(index, event_time)
    lengths.insert(index, text_length)
    features = features_at(times, lengths, event_time)  # before pruning: the previous event may be days old
    # Keep the last day, and always the newest event (the next event's "previous").
    keep = min(max(bisect_left(times, times[-1] - DAY), len(times) - MAX_EVENTS), len(times) - 1)
    return {"ids": ids[keep:], "times": times[keep:], "lengths": lengths[keep:]}, features


def features_at(times: list[float], lengths: list[int], at: float) -> Features:
    """Window features as of time ``at`` over sorted ``times`` (which include the event at ``at``)."""
    end = bisect_right(times, at)
    first_at = bisect_left(times, at)
    start_1h = bisect_right(times, at - HOUR)
    start_24h = bisect_right(times, at - DAY)
    window = lengths[start_24h:end]
    return {
        "msg_count_1h": end - start_1h,
        "msg_count_24h": end - start_24h,
        "mean_text_length": sum(window) / len(window) if window else 0.0,
        "seconds_since_last_event": at - times[first_at - 1] if first_at > 0 else None,
    }
