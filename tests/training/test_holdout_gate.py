"""The holdout gate: a retrained candidate is published only when it beats or matches the champion on its holdout."""

from __future__ import annotations

from dataclasses import replace

import pytest

from training.dataset import bootstrap_dataset, split_by_time
from training.evaluation import HoldoutGateRejected
from training.pipeline import build_version, holdout_gate

pytestmark = pytest.mark.unit

ROTATE = {"negative": "neutral", "neutral": "positive", "positive": "negative"}


def test_a_candidate_worse_than_the_champion_on_the_same_holdout_is_refused(tiny_version, tmp_path) -> None:
    settings = tiny_version.settings
    dataset = bootstrap_dataset(settings)
    train, _ = split_by_time(dataset.frame, settings.training.validation_fraction)
    # The candidate learns wrong labels (rotated) on its training part; its holdout keeps the true ones.
    frame = dataset.frame.copy()
    learned = frame["event_id"].isin(set(train["event_id"]))
    frame.loc[learned, "label"] = frame.loc[learned, "label"].map(ROTATE)

    built = build_version(
        settings,
        replace(dataset, frame=frame),
        tmp_path / "candidate",
        champion=1,
        champion_dir=tiny_version.path,
        warm_start=False,
        progress=False,
    )

    assert built.champion_metrics is not None and built.champion_metrics.samples == built.metrics.samples
    assert built.champion_metrics.macro_f1 > built.metrics.macro_f1 + 0.5
    with pytest.raises(HoldoutGateRejected, match="rejected by the holdout gate: candidate macro-F1") as info:
        holdout_gate(built, margin=0.0)
    assert "champion v1" in str(info.value) and info.value.champion_metrics == built.champion_metrics
    holdout_gate(built, margin=1.0)  # a margin of 1 switches the gate off


def test_a_candidate_that_matches_the_champion_or_has_none_passes(tiny_version) -> None:
    built = tiny_version.built
    assert built.champion_metrics is None  # no champion (bootstrap): no gate
    holdout_gate(built, margin=0.0)
    matched = replace(built, champion_metrics=built.metrics)
    holdout_gate(matched, margin=0.0)
    better_champion = built.metrics.model_copy(update={"macro_f1": built.metrics.macro_f1 + 0.05})
    holdout_gate(replace(built, champion_metrics=better_champion), margin=0.05)
    with pytest.raises(HoldoutGateRejected):
        holdout_gate(replace(built, champion_metrics=better_champion), margin=0.01)
