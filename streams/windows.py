"""Per-entity sliding windows over event time: the pure logic behind the feature worker's faust table.

An entity's state is a JSON-able dict (it lives in a changelog-backed faust table): the id fingerprints, times and
text lengths of its events in the last 24 h, sorted by event time, capped at ``MAX_EVENTS``. Keeping the fingerprints
makes a redelivered event (at-least-once) count once.

Fingerprints, not the ids, so that a full window stays well under Kafka's 1 MB record limit whatever the ids: the
whole state is one changelog record, and 10,000 ids of 128 characters made it 1.2 MB, which faust's producer refuses
(the worker crashed on it, and again on every restart).
"""

from __future__ import annotations

import hashlib
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


def fingerprint(event_id: str) -> int:
    """The 63-bit fingerprint of an event id a window keeps (any two of 10,000 ids collide with odds of about 5e-12)."""
    digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def add_event(state: dict | None, event_id: str, event_time: float, text_length: int) -> tuple[dict, Features]:
    """Fold one event (time in epoch seconds) into ``state``, which is left as it was.

    Returns:
        The new state and the features of the windows that end at this event's time (a late event is placed by
        its time). An event already in the state is not counted again; its features are computed as before.
    """
    window = EntityWindow(state)
    features = window.add(event_id, event_time, text_length)
    return window.state(), features


class EntityWindow:
    """One entity's window, changed in place: what folds many events of an entity at a time.

    Taking a state copies it once; each event then costs a set lookup and one insertion, not a copy of the whole
    window (which holds up to ``MAX_EVENTS`` events of a busy entity).
    """

    __slots__ = ("ids", "times", "lengths", "_seen", "_total")

    def __init__(self, state: dict | None = None) -> None:
        state = state or empty_state()
        # a state written before fingerprints holds the ids themselves
        self.ids = [fingerprint(i) if isinstance(i, str) else i for i in state["ids"]]
        self.times, self.lengths = list(state["times"]), list(state["lengths"])
        self._seen = set(self.ids)
        self._total = sum(self.lengths)

    def add(self, event_id: str, event_time: float, text_length: int) -> Features:
        """Fold one event (see :func:`add_event`) and return its features."""
        times, key = self.times, fingerprint(event_id)
        if key in self._seen:
            return features_at(times, self.lengths, event_time, self._total)
        index = bisect_right(times, event_time)
        self.ids.insert(index, key)
        times.insert(index, event_time)
        self.lengths.insert(index, text_length)
        self._seen.add(key)
        self._total += text_length
        # before pruning: the previous event may be days old
        features = features_at(times, self.lengths, event_time, self._total)
        # Keep the last day, and always the newest event (the next event's "previous").
        keep = min(max(bisect_left(times, times[-1] - DAY), len(times) - MAX_EVENTS), len(times) - 1)
        if keep > 0:
            self._seen.difference_update(self.ids[:keep])
            self._total -= sum(self.lengths[:keep])
            del self.ids[:keep], times[:keep], self.lengths[:keep]
        return features

    def state(self) -> dict:
        """The JSON-able state (shares the window's lists: take it when done folding)."""
        return {"ids": self.ids, "times": self.times, "lengths": self.lengths}


def features_at(times: list[float], lengths: list[int], at: float, total: int | None = None) -> Features:
    """Window features as of time ``at`` over sorted ``times`` (which include the event at ``at``); ``total``, the
    sum of all ``lengths`` when the caller keeps it, spares summing a long window (its complement is summed instead).
    """
    end = bisect_right(times, at)
    first_at = bisect_left(times, at)
    start_1h = bisect_right(times, at - HOUR)
    start_24h = bisect_right(times, at - DAY)
    count = end - start_24h
    if total is not None and 2 * count > len(lengths):
        length_sum = total - sum(lengths[:start_24h]) - sum(lengths[end:])
    else:
        length_sum = sum(lengths[start_24h:end])
    return {
        "msg_count_1h": end - start_1h,
        "msg_count_24h": count,
        "mean_text_length": length_sum / count if count else 0.0,
        "seconds_since_last_event": at - times[first_at - 1] if first_at > 0 else None,
    }
