"""Drift-quality benchmark: how often the monitor pages on clean traffic, and how fast it finds real drift.

Everything runs in simulated time (no wall-clock waits) and prints one JSON line:

- *stationary* replays: the serving model's own traffic (the synthetic domain at the training set's event rate and
  entity mix, text lengths as generated), each replay starting on a fresh feature store, checked as the monitor checks
  (a sliding window of ``window_size`` predictions, a check every ``check_every_events``, hysteresis): false alarms
  (pages) per kind, ARL0 (checks per false alarm) with an exact Poisson (Garwood) 95 % interval (with no alarm in N
  checks its lower bound is N / 3.69: showing ARL0 >= 8,640 takes about 32,000 clean checks, ``--replays 64``);
  alarms raised while the window still holds the fresh store's first simulated day are also counted apart;
- *injected drifts*, subtle and clear: covariate shift of the numeric features (entities send faster), vocabulary
  shift (unseen words), label-mapping concept drift (positive and negative swap), class-balance (prior) shift and a
  gradual drift (the generator's own concept drift, ramped in over several windows): per kind, detection delay in
  checks and events after the onset (ARL1), and misses within ``--horizon`` checks;
- a baseline row on the same windows: the decision of Evidently's ``DataDriftPreset`` defaults (each column's default
  test at its default threshold, dataset drift when half the columns drift), flagged per check (the preset has no
  hysteresis) and, for comparison, with the monitor's hysteresis; on the stationary side it runs on the first
  ``--baseline-replays`` replays only (its tests cost twice the decision's).

No model runs per check: a pool of events is scored once by the version's model in process, with the text
descriptors of ``streams.text_stats``; a check's window draws its events from the pool (or a shifted pool) and gets
each entity's features as the feature worker serves them (``streams.windows``: the row folded at the entity's
previous event), computed in event order. The pool is scored with the features of its own generated stream, so a
prediction does not follow a covariate shift of the features (the synthetic labels depend on the text only).

    python bench/drift_quality.py --plot drift_quality.png                 # trains a tiny version first (minutes)
    python bench/drift_quality.py --version-dir PATH --plot drift_quality.png   # an existing version folder
    python bench/drift_quality.py --model word --replays 2 --checks 100    # the stand-in model (seconds)

The decision under test is ``monitoring``'s, through ``MonitorDecision``: the calibrated ``monitoring.drift.decide``
with the settings' ``DriftPolicy`` and the version's calibration (``monitoring.calibration``), and
``monitoring.policy.DriftState`` hysteresis. Labels come for half of the events, half a check interval late.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy.stats import chi2

from foundation.settings import Settings, load_settings
from monitoring.drift import DriftPolicy, check_drift
from monitoring.policy import DriftState
from monitoring.reference import DESCRIPTOR_COLUMNS, ReferenceSample, reference_from_metadata
from monitoring.window import TRUE_LABEL

try:
    from monitoring.window import ENTITY_ID
except ImportError:  # a monitor that does not count entities
    ENTITY_ID = "entity_id"
from streams.synthetic import LabelledEvent, SyntheticStream
from streams.text_stats import text_stats
from streams.windows import DAY, HOUR

KINDS = ("data", "prediction", "performance")
#: The four features the feature worker computes; the two profile features stay empty for live traffic.
WINDOW_FEATURES = ("msg_count_1h", "msg_count_24h", "mean_text_length", "seconds_since_last_event")
#: Target of issue 12: at most one false page per 30 days of 5-minute checks.
TARGET_ARL0 = 30 * 24 * 12
#: Words no model or tokenizer vocabulary of this project holds (the vocabulary shift).
NOVEL_WORDS = "zorbex quilfy plonkish vembrat drozzle frimble snarvek yoltish".split()
SWAP = {"negative": "positive", "positive": "negative"}

TINY_TRAINING = {"encoder": "tiny", "epochs": 3, "learning_rate": 3e-3, "batch_size": 32, "min_samples": 20}


# --- the pool: events scored once -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """Scored events: entity index, text length, descriptors, predicted label and max score, true label."""

    entity: np.ndarray
    length: np.ndarray
    descriptors: np.ndarray  # [n, len(DESCRIPTOR_COLUMNS)]
    label: np.ndarray
    max_score: np.ndarray
    truth: np.ndarray

    def __len__(self) -> int:
        return len(self.entity)

    def take(self, index: np.ndarray) -> Pool:
        return Pool(*(getattr(self, f)[index] for f in Pool.__dataclass_fields__))

    def with_truth(self, truth: np.ndarray) -> Pool:
        return replace(self, truth=truth)


class Scorer(Protocol):
    labels: tuple[str, ...]
    vocab: frozenset[str] | None

    def probs(self, texts: list[str], features: np.ndarray) -> np.ndarray: ...


class VersionScorer:
    """A version folder's model in process (``training.servable.runtime.Predictor``)."""

    def __init__(self, version_dir: Path) -> None:
        from streams.text_stats import load_vocab
        from training.servable import runtime

        self.predictor = runtime.Predictor.load(version_dir)
        self.labels = tuple(self.predictor.labels)
        self.vocab = load_vocab(version_dir / runtime.TOKENIZER_DIR)

    def probs(self, texts: list[str], features: np.ndarray) -> np.ndarray:
        return np.asarray(self.predictor.predict_proba(texts, features.astype(np.float32)))


class WordScorer:
    """The monitor's stand-in model (``monitoring.synthetic.WordModel``): seconds instead of minutes, for tests."""

    def __init__(self, seed: int = 1) -> None:
        from monitoring.synthetic import WordModel

        self.model = WordModel().fit(SyntheticStream(seed=seed).stream(2000))
        self.labels = self.model.labels
        self.vocab = self.model.vocab

    def probs(self, texts: list[str], features: np.ndarray) -> np.ndarray:
        return np.array([[s[label] for label in self.labels] for s in map(self.model.scores, texts)])


@dataclass(frozen=True)
class Traffic:
    """The serving traffic's shape: the training set's event rate and entity count."""

    rate: float  # events per second
    entities: int

    @classmethod
    def of(cls, settings: Settings) -> Traffic:
        config = settings.training
        return cls(config.bootstrap_samples / (config.bootstrap_days * DAY), config.bootstrap_entities)


def served_features(entity: np.ndarray, times: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per event, the ``WINDOW_FEATURES`` the inference worker reads: the row the feature worker folded at the
    entity's previous event (``streams.windows.add_event``), NaN for an entity's first event. Vectorised; events of
    one entity must have distinct times. The worker's cap of 10,000 events per entity and day is not modelled."""
    n = len(entity)
    out = np.full((n, len(WINDOW_FEATURES)), np.nan)
    if n == 0:
        return out
    order = np.lexsort((times, entity))
    ent, t, ln = entity[order], times[order].astype(np.float64), lengths[order].astype(np.float64)
    # One sorted key over all entities: searches never cross an entity (gaps of 10x the time span).
    span = float(t.max() - t.min()) + 2 * DAY + 1.0
    key = ent * (10 * span) + (t - t.min())
    position = np.arange(n)
    start_1h = np.searchsorted(key, key - HOUR, side="right")
    start_24h = np.searchsorted(key, key - DAY, side="right")
    cum = np.concatenate([[0.0], np.cumsum(ln)])
    count_24h = position + 1 - start_24h
    folded = np.column_stack(
        [
            position + 1 - start_1h,
            count_24h,
            (cum[position + 1] - cum[start_24h]) / count_24h,
            np.where(np.r_[False, ent[1:] == ent[:-1]], t - np.r_[t[0], t[:-1]], np.nan),
        ]
    )
    served = np.full_like(folded, np.nan)
    same = np.r_[False, ent[1:] == ent[:-1]]
    served[same] = folded[np.flatnonzero(same) - 1]
    out[order] = served
    return out


def generate(stream: SyntheticStream, n: int, drifted: bool = False) -> list[LabelledEvent]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [stream.one(start + timedelta(seconds=i), drifted=drifted) for i in range(n)]


def score_pool(scorer: Scorer, events: Sequence[LabelledEvent], traffic: Traffic, entity_ids: dict[str, int]) -> Pool:
    """Score ``events`` once (with the features of their own stream at ``traffic``'s rate) and describe them."""
    entity = np.array([entity_ids.setdefault(e.event.entity_id, len(entity_ids)) for e in events])
    texts = [e.event.text for e in events]
    lengths = np.array([len(t) for t in texts], dtype=np.float64)
    times = np.arange(len(events)) / traffic.rate
    features = np.zeros((len(events), 6))
    features[:, : len(WINDOW_FEATURES)] = np.nan_to_num(served_features(entity, times, lengths), nan=0.0)
    probs = np.concatenate([scorer.probs(texts[i : i + 512], features[i : i + 512]) for i in range(0, len(texts), 512)])
    stats = [text_stats(t, scorer.vocab) for t in texts]
    descriptors = np.array([[s.get(k, np.nan) for k in ("length", "word_count", "oov_share")] for s in stats])
    labels = np.array(scorer.labels, dtype=object)
    return Pool(
        entity=entity,
        length=lengths,
        descriptors=descriptors,
        label=labels[probs.argmax(axis=1)],
        max_score=probs.max(axis=1),
        truth=np.array([e.label for e in events], dtype=object),
    )


def with_novel_words(events: Sequence[LabelledEvent], share: float, words: int, seed: int) -> list[LabelledEvent]:
    """The vocabulary shift: ``share`` of the texts get ``words`` unseen words; labels unchanged."""
    rng = np.random.default_rng(seed)
    shifted = []
    for e in events:
        if rng.random() < share:
            tokens = e.event.text.split()
            for word in rng.choice(NOVEL_WORDS, size=words):
                tokens.insert(int(rng.integers(0, len(tokens) + 1)), str(word))
            e = LabelledEvent(e.event.model_copy(update={"text": " ".join(tokens)}), e.label)
        shifted.append(e)
    return shifted


# --- the decision under test --------------------------------------------------------------------------------------


class Decision(Protocol):
    """One check's verdict per drift kind (None: undecided), and the hysteresis that turns verdicts into pages."""

    name: str
    hysteresis_checks: int
    resolve_checks: int

    def __call__(self, frame: pd.DataFrame, observed_s: np.ndarray) -> dict[str, bool | None]: ...


@dataclass
class MonitorDecision:
    """``monitoring``'s decision with the settings' policy: the calibrated ``monitoring.drift.decide`` with the
    version's stored calibration (calibrated here when none matches), or ``check_drift`` where ``decide`` is absent."""

    reference: ReferenceSample
    policy: DriftPolicy
    name: str = "monitoring"

    def __post_init__(self) -> None:
        try:
            from monitoring.calibration import calibrate, stored_calibration
            from monitoring.drift import decide
        except ImportError:
            self.calibration = None
            self.name = "monitoring.drift.check_drift"
            return
        self._decide = decide
        self.calibration = stored_calibration(self.reference, self.policy) or calibrate(self.reference, self.policy)
        self.name = "monitoring.drift.decide (calibrated)"

    @property
    def hysteresis_checks(self) -> int:
        return self.policy.hysteresis_checks

    @property
    def resolve_checks(self) -> int:
        return self.policy.resolve_checks

    def __call__(self, frame: pd.DataFrame, observed_s: np.ndarray) -> dict[str, bool | None]:
        if self.calibration is None:
            result = check_drift(frame, self.reference, self.policy)
        else:
            result = self._decide(frame, self.reference, self.calibration, self.policy, observed_s)
        return {kind: result.kinds[kind].detected for kind in KINDS}


@dataclass
class EvidentlyPreset:
    """Evidently's ``DataDriftPreset`` defaults on the window's columns: each column's default test
    (``get_stattest(..., None)``) at its default threshold; dataset drift when at least half the columns drift."""

    reference: ReferenceSample
    hysteresis_checks: int = 1
    resolve_checks: int = 1
    drift_share: float = 0.5
    name: str = "evidently DataDriftPreset defaults"

    def __call__(self, frame: pd.DataFrame, observed_s: np.ndarray) -> dict[str, bool | None]:
        from evidently.legacy.calculations.stattests.registry import get_stattest
        from evidently.legacy.core import ColumnType

        drifted = tested = 0
        for column in self.reference.frame.columns:
            ref = self.reference.frame[column].dropna()
            cur = frame[column].dropna() if column in frame.columns else pd.Series(dtype=float)
            if ref.empty or cur.empty:
                continue  # an empty column: the preset reports it empty and does not count it
            column_type = ColumnType.Categorical if column == "label" else ColumnType.Numerical
            test = get_stattest(ref, cur, column_type, None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                drifted += bool(test(ref, cur, column_type, None).drifted)
            tested += 1
        return {"dataset": drifted >= self.drift_share * tested if tested else None}


# --- replays and checks ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """How the monitor checks: its window and cadence (``monitoring.*`` settings) and the labels it gets."""

    window: int
    min_window: int
    every: int
    label_share: float
    label_delay: int  # events: a label is known this many events after its prediction


@dataclass(frozen=True)
class Segment:
    """A run of ``events`` events drawn from ``pool`` (``weights``: per pool row; None: uniform), at ``rate_factor``
    times the base rate; ``ramp`` mixes in ``ramp[0]`` from 0 to ``ramp[1]`` share over the segment."""

    events: int
    pool: Pool
    rate_factor: float = 1.0
    weights: np.ndarray | None = None
    ramp: tuple[Pool, float] | None = None


@dataclass
class Replay:
    """One simulated stream's columns, in event order."""

    times: np.ndarray
    entity: np.ndarray
    features: np.ndarray
    descriptors: np.ndarray
    label: np.ndarray
    max_score: np.ndarray
    truth: np.ndarray  # None where the label never comes


def simulate(segments: Sequence[Segment], traffic: Traffic, label_share: float, rng: np.random.Generator) -> Replay:
    """Draw the segments' events from their pools and compute the served features in event order."""
    parts: list[Pool] = []
    gaps = []
    for seg in segments:
        p = None if seg.weights is None else seg.weights / seg.weights.sum()
        drawn = seg.pool.take(rng.choice(len(seg.pool), size=seg.events, p=p))
        if seg.ramp is not None:
            other, top = seg.ramp
            share = np.linspace(0.0, top, seg.events)
            mixed = rng.random(seg.events) < share
            alt = other.take(rng.choice(len(other), size=seg.events))
            drawn = Pool(*(_mix(mixed, getattr(alt, f), getattr(drawn, f)) for f in Pool.__dataclass_fields__))
        parts.append(drawn)
        gaps.append(np.full(seg.events, 1.0 / (traffic.rate * seg.rate_factor)))
    pool = Pool(*(np.concatenate([getattr(p, f) for p in parts]) for f in Pool.__dataclass_fields__))
    times = np.cumsum(np.concatenate(gaps))
    features = np.full((len(times), 6), np.nan)
    features[:, : len(WINDOW_FEATURES)] = served_features(pool.entity, times, pool.length)
    truth = np.where(rng.random(len(times)) < label_share, pool.truth, None)
    return Replay(times, pool.entity, features, pool.descriptors, pool.label, pool.max_score, truth)


def _mix(pick: np.ndarray, other: np.ndarray, base: np.ndarray) -> np.ndarray:
    return np.where(pick[:, None] if base.ndim == 2 else pick, other, base)


def window_frame(replay: Replay, start: int, end: int, known_until: int, feature_names: Sequence[str]) -> pd.DataFrame:
    """The window ``[start, end)`` as ``SlidingWindow.frame`` gives it; labels of events from ``known_until`` on have
    not arrived yet."""
    data: dict[str, Any] = {name: replay.features[start:end, i] for i, name in enumerate(feature_names[:6])}
    for i, name in enumerate(DESCRIPTOR_COLUMNS):
        data[name] = replay.descriptors[start:end, i]
    data["label"] = replay.label[start:end]
    data["max_score"] = replay.max_score[start:end]
    truth = replay.truth[start:end].copy()
    truth[max(0, known_until - start) :] = None
    data[TRUE_LABEL] = truth
    data[ENTITY_ID] = replay.entity[start:end]
    return pd.DataFrame(data)


@dataclass
class Pages:
    """The checks of one replay: per decision and kind, the check indices that paged, and verdicts per check."""

    checks: list[int] = field(default_factory=list)  # window end (event index) of each check
    fired: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # decision -> kind -> check numbers
    flagged: dict[str, dict[str, int]] = field(default_factory=dict)  # decision -> kind -> checks that detected


def run_checks(
    replay: Replay, shape: Shape, decisions: Sequence[Decision], feature_names: Sequence[str], first_end: int = 0
) -> Pages:
    """Check the replay as the monitor would: a check every ``shape.every`` events once the window holds
    ``shape.min_window`` (``first_end``: no check ends before this event)."""
    pages = Pages()
    states = {d.name: {} for d in decisions}
    for d in decisions:
        pages.fired[d.name] = {}
        pages.flagged[d.name] = {}
    n = len(replay.times)
    for end in range(max(shape.every, first_end), n + 1, shape.every):
        start = max(0, end - shape.window)
        if end - start < shape.min_window:
            continue
        number = len(pages.checks)
        pages.checks.append(end)
        frame = window_frame(replay, start, end, end - shape.label_delay, feature_names)
        observed_s = replay.times[start:end] - replay.times[0]  # per event; each replay starts on a fresh store
        for d in decisions:
            for kind, detected in d(frame, observed_s).items():
                state = states[d.name].setdefault(kind, DriftState())
                pages.flagged[d.name][kind] = pages.flagged[d.name].get(kind, 0) + bool(detected)
                pages.fired[d.name].setdefault(kind, [])
                if state.update(detected, d.hysteresis_checks, d.resolve_checks) == "fired":
                    pages.fired[d.name][kind].append(number)
    return pages


# --- figures ---------------------------------------------------------------------------------------------------------


def arl0(checks: int, alarms: int) -> dict[str, Any]:
    """Checks per false alarm, with the exact (Garwood) 95 % interval on the Poisson alarm count.
    With no alarm the point estimate is unbounded (null) and the lower bound is ``checks / 3.69``."""
    low_count = chi2.ppf(0.025, 2 * alarms) / 2 if alarms else 0.0
    high_count = chi2.ppf(0.975, 2 * alarms + 2) / 2
    return {
        "checks": checks,
        "false_alarms": alarms,
        "arl0": round(checks / alarms, 1) if alarms else None,
        "arl0_ci95": [round(checks / high_count, 1), round(checks / low_count, 1) if alarms else None],
        "meets_target": bool(checks / high_count >= TARGET_ARL0),
    }


@dataclass(frozen=True)
class Injection:
    """One injected drift: what changes from the onset on."""

    name: str
    size: str
    description: str
    segment: Callable[[int], Segment]  # events -> the post-onset segment


def injections(pools: dict[str, Pool], settings_labels: tuple[str, ...]) -> list[Injection]:
    base = pools["base"]
    out = []
    for size, factor in (("subtle", 1.5), ("clear", 4.0)):
        out.append(
            Injection(
                "covariate",
                size,
                f"entities send {factor}x as often (window features shift)",
                lambda n, f=factor: Segment(n, base, rate_factor=f),
            )
        )
    for size, key in (("subtle", "vocab_subtle"), ("clear", "vocab_clear")):
        what = "30 % of texts get 1 unseen word" if size == "subtle" else "every text gets 3 unseen words"
        out.append(Injection("vocabulary", size, what, lambda n, k=key: Segment(n, pools[k])))
    for size, share in (("subtle", 0.2), ("clear", 1.0)):
        rng = np.random.default_rng(7)
        flip = rng.random(len(base)) < share
        truth = np.array([SWAP.get(t, t) if f else t for t, f in zip(base.truth, flip, strict=True)], dtype=object)
        swapped = base.with_truth(truth)
        out.append(
            Injection(
                "concept",
                size,
                f"true labels positive<->negative for {share:.0%} of events",
                lambda n, p=swapped: Segment(n, p),
            )
        )
    for size, first in (("subtle", 0.45), ("clear", 0.7)):
        mix = {settings_labels[0]: first, **{label: (1 - first) / 2 for label in settings_labels[1:]}}
        weights = np.array([mix.get(t, 0.0) for t in base.truth])
        out.append(
            Injection(
                "prior",
                size,
                "class shares " + "/".join(f"{v:.2f}" for v in mix.values()),
                lambda n, w=weights: Segment(n, base, weights=w),
            )
        )
    for size, top in (("subtle", 0.3), ("clear", 1.0)):
        out.append(
            Injection(
                "gradual",
                size,
                f"the generator's concept drift ramps to {top:.0%} over the horizon",
                lambda n, t=top: Segment(n, base, ramp=(pools["drifted"], t)),
            )
        )
    return out


def delays(pages: Pages, onset: int, first_check_after: int, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per decision and kind: the first page after the onset, in checks and events (None: missed)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        for kind, fired in pages.fired[name].items():
            after = [c for c in fired if c >= first_check_after]
            before = [c for c in fired if c < first_check_after]
            hit = after[0] if after else None
            out.setdefault(name, {})[kind] = {
                "checks": None if hit is None else hit - first_check_after + 1,
                "events": None if hit is None else pages.checks[hit] - onset,
                "before_onset": len(before),
            }
    return out


def summarise_delays(trials: list[dict[str, Any]], window: int) -> dict[str, Any]:
    found = [t for t in trials if t["checks"] is not None]
    return {
        "trials": len(trials),
        "detected": len(found),
        "missed": len(trials) - len(found),
        "arl1_checks": round(float(np.mean([t["checks"] for t in found])), 2) if found else None,
        "arl1_events": round(float(np.mean([t["events"] for t in found])), 1) if found else None,
        "arl1_windows": round(float(np.mean([t["events"] for t in found])) / window, 2) if found else None,
        "max_checks": max((t["checks"] for t in found), default=None),
        "max_events": max((t["events"] for t in found), default=None),
        "alarms_before_onset": sum(t["before_onset"] for t in trials),
    }


# --- the run --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    model: str = "tiny"
    version_dir: Path | None = None
    replays: int = 20
    checks: int = 500
    trials: int = 5
    horizon: int = 20
    pre_checks: int = 5
    pool: int = 20_000
    baseline_replays: int = 2
    seed: int = 0


def build_version(settings: Settings, dest: Path) -> Path:
    """Train and export a tiny version on the bootstrap set, as ``driftloop train --bootstrap`` does (minutes)."""
    from training.dataset import bootstrap_dataset
    from training.pipeline import build_version as build

    build(settings, bootstrap_dataset(settings), dest, trigger_id="bench-drift-quality", progress=False)
    return dest


def word_reference(scorer: WordScorer, settings: Settings) -> ReferenceSample:
    """The stand-in model's reference, built as training builds one: holdout rows of the bootstrap set."""
    from training.dataset import bootstrap_dataset, split_by_time
    from training.export import reference_sample
    from training.servable.runtime import FEATURE_NAMES

    dataset = bootstrap_dataset(settings)
    _, holdout = split_by_time(dataset.frame, settings.training.validation_fraction)
    features = np.nan_to_num(holdout[list(FEATURE_NAMES)].to_numpy(dtype=np.float64), nan=0.0)
    probs = scorer.probs(list(holdout["text"]), features)
    rows = reference_sample(
        holdout, probs, scorer.labels, settings.training.reference_size, settings.training.seed, scorer.vocab
    )
    metrics = {"accuracy": float(np.mean(np.array(scorer.labels)[probs.argmax(1)] == holdout["label"].to_numpy()))}
    metadata = {
        "labels": list(scorer.labels),
        "feature_names": list(FEATURE_NAMES),
        "reference": rows,
        "metrics": metrics,
    }
    return reference_from_metadata(metadata, "classifier", 1, Path("<word model>"))


def run(config: Config, settings: Settings, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    started = time.perf_counter()
    logging.disable(logging.WARNING)
    traffic = Traffic.of(settings)
    monitoring = settings.monitoring
    shape = Shape(
        window=monitoring.window_size,
        min_window=min(monitoring.min_window, monitoring.window_size),
        every=monitoring.check_every_events,
        label_share=0.5,
        label_delay=monitoring.check_every_events // 2,
    )

    with tempfile.TemporaryDirectory() as tmp:
        if config.model == "word":
            scorer: Scorer = WordScorer()
            reference = word_reference(scorer, settings)
        else:
            version_dir = config.version_dir or build_version(settings, Path(tmp) / "version")
            scorer = VersionScorer(version_dir)
            metadata = json.loads((version_dir / "metadata.json").read_text(encoding="utf-8"))
            reference = reference_from_metadata(metadata, metadata.get("model", "classifier"), 1, version_dir)
        progress(f"model ready ({time.perf_counter() - started:.0f} s)")

        entity_ids: dict[str, int] = {}
        stream = SyntheticStream(
            seed=config.seed + 100, entities=traffic.entities, labels=tuple(settings.training.labels)
        )
        base_events = generate(stream, config.pool)
        pools = {
            "base": score_pool(scorer, base_events, traffic, entity_ids),
            "vocab_subtle": score_pool(scorer, with_novel_words(base_events, 0.3, 1, config.seed), traffic, entity_ids),
            "vocab_clear": score_pool(scorer, with_novel_words(base_events, 1.0, 3, config.seed), traffic, entity_ids),
            "drifted": score_pool(scorer, generate(stream, config.pool // 2, drifted=True), traffic, entity_ids),
        }
    progress(f"pools scored ({time.perf_counter() - started:.0f} s)")

    policy = DriftPolicy.from_settings(monitoring)
    decision = MonitorDecision(reference, policy)
    preset = EvidentlyPreset(reference)
    preset_hysteresis = EvidentlyPreset(
        reference, policy.hysteresis_checks, policy.resolve_checks, name="evidently defaults + monitor hysteresis"
    )
    decisions: list[Decision] = [decision, preset, preset_hysteresis]
    names = [d.name for d in decisions]
    feature_names = reference.feature_names
    rng = np.random.default_rng(config.seed)

    # Stationary replays, each from a fresh store.
    events_per_replay = shape.every * config.checks
    totals: dict[str, dict[str, int]] = {n: {} for n in names}
    fresh: dict[str, dict[str, int]] = {n: {} for n in names}
    flagged: dict[str, dict[str, int]] = {n: {} for n in names}
    checks = 0
    baseline_checks = 0
    check_s = []
    for r in range(config.replays):
        replay = simulate([Segment(events_per_replay, pools["base"])], traffic, shape.label_share, rng)
        with_baseline = r < config.baseline_replays  # Evidently's tests cost more than the decision under test
        t0 = time.perf_counter()
        pages = run_checks(replay, shape, decisions if with_baseline else decisions[:1], feature_names)
        check_s.append((time.perf_counter() - t0) / max(1, len(pages.checks)))
        # Checks whose window still holds events of the store's first day.
        first_day = int(np.searchsorted(replay.times, replay.times[0] + DAY))
        fresh_until = int(np.searchsorted(pages.checks, first_day + shape.window))
        for name in pages.fired:
            for kind, fired in pages.fired[name].items():
                totals[name][kind] = totals[name].get(kind, 0) + len(fired)
                fresh[name][kind] = fresh[name].get(kind, 0) + sum(1 for c in fired if c <= fresh_until)
            for kind, count in pages.flagged[name].items():
                flagged[name][kind] = flagged[name].get(kind, 0) + count
        checks += len(pages.checks)
        baseline_checks += len(pages.checks) if with_baseline else 0
        progress(f"stationary replay {r + 1}/{config.replays}: {checks} checks ({time.perf_counter() - started:.0f} s)")

    def stationary_row(name: str, n_checks: int) -> dict[str, Any]:
        kinds = {
            k: {
                **arl0(n_checks, totals[name][k]),
                "fresh_store_alarms": fresh[name][k],
                "flag_rate": round(flagged[name][k] / n_checks, 4),
            }
            for k in totals[name]
        }
        any_alarms = sum(totals[name].values())
        return {"decision": name, "kinds": kinds, "any": arl0(n_checks, any_alarms)}

    stationary = {
        "replays": config.replays,
        "checks_per_replay": config.checks,
        "monitor": stationary_row(decision.name, checks),
        "baseline_evidently": stationary_row(preset.name, baseline_checks),
        "baseline_evidently_hysteresis": stationary_row(preset_hysteresis.name, baseline_checks),
    }

    # Injected drifts: a burn-in (the store fills), pre-onset checks, then the drift for the horizon.
    drifts: dict[str, Any] = {}
    burn_in = max(shape.window, int(DAY * traffic.rate))
    for injection in injections(pools, tuple(settings.training.labels)):
        trials: dict[str, dict[str, list]] = {}
        for _ in range(config.trials):
            pre = burn_in + config.pre_checks * shape.every
            post = config.horizon * shape.every
            replay = simulate([Segment(pre, pools["base"]), injection.segment(post)], traffic, shape.label_share, rng)
            pages = run_checks(replay, shape, decisions[:2], feature_names, first_end=burn_in)
            first_after = next(i for i, end in enumerate(pages.checks) if end > pre)
            for name, kinds in delays(pages, pre, first_after, names[:2]).items():
                for kind, result in kinds.items():
                    trials.setdefault(name, {}).setdefault(kind, []).append(result)
        drifts[f"{injection.name}/{injection.size}"] = {
            "description": injection.description,
            "monitor": {k: summarise_delays(v, shape.window) for k, v in trials.get(decision.name, {}).items()},
            "baseline_evidently": summarise_delays(trials.get(preset.name, {}).get("dataset", []), shape.window),
        }
        progress(f"drift {injection.name}/{injection.size} ({time.perf_counter() - started:.0f} s)")

    return {
        "bench": "drift_quality",
        "decision": decision.name,
        "model": config.model if config.version_dir is None else f"version {config.version_dir}",
        "settings": {
            "window_size": shape.window,
            "min_window": shape.min_window,
            "check_every_events": shape.every,
            "hysteresis_checks": policy.hysteresis_checks,
            "resolve_checks": policy.resolve_checks,
            "data_drift_share": policy.data_drift_share,
            "prediction_drift_share": policy.prediction_drift_share,
            "min_labelled": policy.min_labelled,
            "label_share": shape.label_share,
            "label_delay_events": shape.label_delay,
            "reference_rows": len(reference.frame),
            "events_per_s": round(traffic.rate, 5),
            "entities": traffic.entities,
            "pool": config.pool,
        },
        "target_arl0": TARGET_ARL0,
        "horizon_windows": config.horizon * shape.every / shape.window,
        "stationary": stationary,
        "baseline_stationary_checks": f"the first {min(config.baseline_replays, config.replays)} replays",
        "calibration": None
        if decision.calibration is None
        else {
            "alpha": decision.calibration.alpha,
            "thresholds": decision.calibration.thresholds,
            "resamples": decision.calibration.resamples,
            "seconds": round(decision.calibration.duration_s, 2),
        },
        "drifts": drifts,
        "clear_detected_within_2_windows": {
            name: any(r["missed"] == 0 and r["max_events"] <= 2 * shape.window for r in row["monitor"].values())
            for name, row in drifts.items()
            if name.endswith("/clear")
        },
        "check_ms": round(1000 * float(np.mean(check_s)), 2) if check_s else None,
        "seconds": round(time.perf_counter() - started, 1),
        "evidently": version("evidently"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


# --- plot and command line ------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib")
    return plt


def plot(line: dict[str, Any], path: Path) -> None:
    """Left: ARL0 per kind with its 95 % interval, beside the Evidently baseline and the target. Right: detection
    delay (windows after the onset) per injected drift and kind; a cross at the horizon marks a miss."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    stationary = line["stationary"]
    rows = [(f"{k}", v) for k, v in stationary["monitor"]["kinds"].items()] + [
        ("any (monitor)", stationary["monitor"]["any"])
    ]
    rows += [
        ("Evidently preset", stationary["baseline_evidently"]["kinds"]["dataset"]),
        ("Evidently + hysteresis", stationary["baseline_evidently_hysteresis"]["kinds"]["dataset"]),
    ]
    for i, (_, row) in enumerate(rows):
        low, high = row["arl0_ci95"]
        point = row["arl0"] if row["arl0"] is not None else low
        top = high if high is not None else point * 3
        left.errorbar(
            [i],
            [point],
            yerr=[[point - low], [top - point]],
            fmt="o" if row["arl0"] else "^",
            capsize=4,
            color="tab:blue" if i < len(rows) - 2 else "tab:gray",
        )
    left.axhline(TARGET_ARL0, color="red", linestyle="--", label=f"target {TARGET_ARL0} checks")
    left.set_yscale("log")
    left.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=30, ha="right")
    left.set_ylabel("checks per false alarm (ARL0, 95 % CI)")
    left.set_title(f"stationary: {stationary['monitor']['any']['checks']} checks (^: no alarm, lower bound)")
    left.legend(loc="lower right")

    window = line["settings"]["window_size"]
    horizon = line["horizon_windows"]
    markers = {"data": "o", "prediction": "s", "performance": "D", "dataset": "*"}
    labelled: set[str] = set()
    names = list(line["drifts"])
    for i, name in enumerate(names):
        row = line["drifts"][name]
        results = {**row["monitor"], "dataset": row["baseline_evidently"]}
        for j, kind in enumerate(("data", "prediction", "performance", "dataset")):
            if kind not in results:
                continue
            r = results[kind]
            y = i + (j - 1.5) * 0.15
            color = "tab:gray" if kind == "dataset" else f"C{j}"
            if r["detected"]:
                legend = None if kind in labelled else ("Evidently preset" if kind == "dataset" else kind)
                labelled.add(kind)
                right.plot([r["arl1_events"] / window], [y], markers[kind], color=color, label=legend)
            if r["missed"]:
                right.plot([horizon], [y], "x", color=color, alpha=0.6)
    right.axvline(2, color="red", linestyle="--", label="2 windows")
    right.set_yticks(range(len(names)), names)
    right.set_xlabel(f"mean detection delay after the onset (windows of {window} events); x: missed")
    right.set_title("injected drifts (monitor by kind; grey: Evidently preset)")
    right.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    models = "tiny: a tiny version trained on the bootstrap set; word: the monitor's stand-in model"
    parser.add_argument("--model", choices=["tiny", "word"], default="tiny", help=models)
    parser.add_argument("--version-dir", type=Path, default=None, help="score with this version folder instead")
    parser.add_argument("--replays", type=int, default=Config.replays, help="stationary replays (each a fresh store)")
    parser.add_argument("--checks", type=int, default=Config.checks, help="checks per stationary replay")
    parser.add_argument("--trials", type=int, default=Config.trials, help="trials per injected drift and size")
    parser.add_argument("--horizon", type=int, default=Config.horizon, help="checks after an onset before a miss")
    parser.add_argument("--pool", type=int, default=Config.pool, help="events scored once by the model")
    parser.add_argument(
        "--baseline-replays",
        type=int,
        default=Config.baseline_replays,
        help="stationary replays the Evidently baseline runs on (its tests are slow)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of ARL0 and detection delays here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args()
    if args.plot:
        _pyplot()  # fail before the benchmark runs
    config = Config(
        model=args.model,
        version_dir=args.version_dir,
        replays=args.replays,
        checks=args.checks,
        trials=args.trials,
        horizon=args.horizon,
        pool=args.pool,
        baseline_replays=args.baseline_replays,
        seed=args.seed,
    )
    settings = load_settings(training=TINY_TRAINING)
    line = run(config, settings, progress=(lambda _: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    if args.plot:
        plot(line, args.plot)
        line["plot"] = str(args.plot)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
