"""The sliding window: size and age limits, dedup by event id, label joins in both orders."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitoring.window import ENTITY_ID, TRUE_LABEL, PendingLabels, SlidingWindow

pytestmark = pytest.mark.unit


@pytest.fixture
def predictions(synthetic_factory):
    return synthetic_factory().predictions(30, seed=5)


def test_keeps_the_last_max_size_and_drops_redeliveries(predictions):
    window = SlidingWindow(max_size=10)
    assert all(window.add(p) for p, _ in predictions)
    assert len(window) == 10
    assert not window.add(predictions[-1][0])
    assert window.add(predictions[0][0])  # evicted earlier, so it is new again
    bounds = window.bounds()
    assert bounds.size == 10 and bounds.labelled == 0
    assert bounds.start <= bounds.end


def test_labels_join_and_count_and_leave_with_their_rows(predictions):
    window = SlidingWindow(max_size=5)
    for prediction, label in predictions[:5]:
        window.add(prediction, true_label=label if prediction is predictions[0][0] else None)
    assert window.labelled == 1
    assert window.add_label(predictions[1][0].event_id, predictions[1][1])
    assert window.add_label(predictions[1][0].event_id, predictions[1][1])  # a redelivered label counts once
    assert window.labelled == 2
    assert not window.add_label("unknown", "x")
    window.add(predictions[5][0])
    window.add(predictions[6][0])  # evicts the two labelled rows
    assert window.labelled == 0


def test_max_age_drops_predictions_older_than_the_newest_minus_age(synthetic_factory):
    window = SlidingWindow(max_size=100, max_age_s=10)
    predictions = [p for p, _ in synthetic_factory().predictions(30, seed=5)]  # one second apart
    for prediction in predictions:
        window.add(prediction)
    bounds = window.bounds()
    assert bounds.end - bounds.start <= timedelta(seconds=10)
    assert len(window) == 11


def test_frame_has_features_descriptors_prediction_and_truth(predictions):
    window = SlidingWindow(max_size=100)
    for prediction, label in predictions:
        window.add(prediction, true_label=label)
    frame = window.frame(("amount", "items", "missing"))
    assert list(frame.columns) == [
        "amount",
        "items",
        "missing",
        "text_length",
        "word_count",
        "oov_share",
        "label",
        "max_score",
        TRUE_LABEL,
        ENTITY_ID,
    ]
    assert frame[ENTITY_ID].tolist() == [p.entity_id for p, _ in predictions]
    assert frame["missing"].isna().all()
    assert frame["amount"].tolist() == [p.features["amount"] for p, _ in predictions]
    assert frame[TRUE_LABEL].tolist() == [label for _, label in predictions]
    assert (frame["max_score"] <= 1).all() and (frame["oov_share"] == 0).all()
    window.clear()
    assert len(window) == 0 and window.frame(("amount",)).empty


def test_pending_labels_are_bounded_oldest_first():
    pending = PendingLabels(max_size=2)
    for i in range(3):
        pending.put(f"e{i}", "x")
    assert len(pending) == 2
    assert pending.pop("e0") is None and pending.pop("e2") == "x" and pending.pop("e2") is None
    disabled = PendingLabels(max_size=0)
    disabled.put("e", "x")
    assert len(disabled) == 0
