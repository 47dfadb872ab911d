"""Canary routing: stable per event, the configured share, champion only when there is no candidate."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.canary import in_canary, route, serving_versions
from streams.schemas import ModelState

pytestmark = pytest.mark.unit

IDS = [f"event-{i}" for i in range(20_000)]


def _state(champion, candidate):
    return ModelState(model="m", champion=champion, candidate=candidate, event="published", at=datetime.now(UTC))


def test_share_is_respected_and_stable():
    routed = route(IDS, 1, 2, 0.2)
    share = routed.count(2) / len(IDS)
    assert 0.18 < share < 0.22
    assert routed == route(IDS, 1, 2, 0.2)
    assert set(routed) == {1, 2}


def test_no_candidate_or_zero_share_means_champion_only():
    assert set(route(IDS[:100], 3, None, 0.5)) == {3}
    assert set(route(IDS[:100], 3, 3, 0.5)) == {3}
    assert set(route(IDS[:100], 3, 4, 0.0)) == {3}


def test_serving_versions_are_explicit_and_never_label_a_candidate_champion():
    state = _state(2, 3)
    assert serving_versions(state, frozenset({1, 2, 3})) == (2, 3)
    assert serving_versions(state, frozenset({1, 2})) == (2, None)  # candidate not served: skipped
    # The champion announced before this server loaded it: never Triton's default (the candidate), an older one.
    assert serving_versions(state, frozenset({1, 3})) == (1, None)
    assert serving_versions(state, frozenset({3})) == (None, None)  # only the candidate: wait
    promoted = ModelState(model="m", champion=3, previous_champion=2, event="promoted", at=datetime.now(UTC))
    assert serving_versions(promoted, frozenset({2, 4})) == (2, None)
    assert serving_versions(None, frozenset({4, 7})) == (7, None)  # nothing announced: the newest served
    assert serving_versions(None, frozenset()) == (None, None)


def test_in_canary_edges():
    assert not any(in_canary(i, 0.0) for i in IDS[:100])
    assert all(in_canary(i, 1.0) for i in IDS[:100])
