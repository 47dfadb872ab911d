"""Training data: labelled events over a time window, with the entity's features as known at each event's time.

- Events (``events-v1``) and labels (``labels-v1``) are read from Kafka and joined by ``event_id``; a re-delivered
  event counts once, and a corrected label (same event, later ``labelled_at``) wins.
- Features come from the Feast offline store through :func:`features.historical_features`: a point-in-time join, so
  each event sees the values with a timestamp at or before its own ``event_time`` and nothing later (no leakage).
  A value Feast does not know (no row yet, or older than the view's TTL) is NaN in the data set and 0 for the model,
  as the inference worker sends it.
- The split is by time: the latest ``validation_fraction`` of the events is the holdout.
- Version 1 has no history to learn from: :func:`bootstrap_dataset` draws it from the seeded synthetic generator,
  with features computed from each entity's earlier synthetic events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from foundation.settings import Settings
from streams.schemas import Event, InvalidRecord, Label, parse_event, parse_label
from streams.skips import SkippedRecords
from streams.synthetic import SyntheticStream
from streams.windows import EntityWindow
from training.exceptions import DatasetError
from training.servable.runtime import FEATURE_NAMES
from training.snapshot import SnapshotError, read_topic

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "entity_id", "event_timestamp", "text", "label")
EVENTS_TOPIC = "events-v1"
LABELS_TOPIC = "labels-v1"
# How much earlier than the window's start a record's broker timestamp may be. Producers stamp records when they
# send them, after the event happened, so this only covers clocks that disagree.
CLOCK_SKEW = timedelta(hours=1)


@dataclass(frozen=True)
class DataWindow:
    """Events with ``start <= event_time < end`` (both UTC)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a data window needs time-zone aware datetimes")
        if self.end <= self.start:
            raise ValueError(f"empty data window: {self.start.isoformat()} .. {self.end.isoformat()}")

    @classmethod
    def last(cls, days: float, end: datetime | None = None) -> DataWindow:
        """The ``days`` before ``end`` (default: now)."""
        end = end or datetime.now(UTC)
        return cls(end - timedelta(days=days), end)

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class Dataset:
    """Labelled events with features.

    Attributes:
        frame: columns ``EVENT_COLUMNS`` then ``FEATURE_NAMES`` (NaN where unknown), sorted by event time.
        window: the time window the events were taken from.
        source: ``"kafka+feast"`` or ``"synthetic"``.
        stats: counts of what was read and dropped (events, labels, unlabelled, unknown labels, duplicates, ...).
    """

    frame: pd.DataFrame
    window: DataWindow
    source: str
    stats: dict[str, Any] = field(default_factory=dict)


# --- labelled events -------------------------------------------------------------------------------------------


def join_labels(
    events: Iterable[Event], labels: Iterable[Label], label_set: tuple[str, ...], window: DataWindow
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Join events with their labels by ``event_id``, within ``window``.

    Args:
        events: events in any order; repeats of an ``event_id`` (at-least-once delivery) count once.
        labels: labels in any order; for an event labelled more than once, the latest ``labelled_at`` wins.
        label_set: the labels the model knows; other labels are dropped and counted.
        window: only events whose ``event_time`` lies in it are kept.

    Returns:
        The frame (``EVENT_COLUMNS``, sorted by event time, then event id) and counts of what was dropped.
    """
    stats = {
        "events": 0,
        "duplicate_events": 0,
        "outside_window": 0,
        "labels": 0,
        "unlabelled": 0,
        "unknown_label": 0,
        "labels_without_event": 0,
    }
    by_id: dict[str, Event] = {}
    for event in events:
        stats["events"] += 1
        if event.event_id in by_id:
            stats["duplicate_events"] += 1
        elif window.contains(event.event_time):
            by_id[event.event_id] = event
        else:
            stats["outside_window"] += 1
    latest: dict[str, Label] = {}
    for label in labels:
        stats["labels"] += 1
        known = latest.get(label.event_id)
        if known is None or label.labelled_at >= known.labelled_at:
            latest[label.event_id] = label
    rows = []
    for event_id, event in by_id.items():
        labelled = latest.get(event_id)
        if labelled is None:
            stats["unlabelled"] += 1
        elif labelled.label not in label_set:
            stats["unknown_label"] += 1
        else:
            rows.append((event_id, event.entity_id, event.event_time, event.text, labelled.label))
    stats["labels_without_event"] = sum(1 for event_id in latest if event_id not in by_id)
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True), stats


def read_labelled_events(
    settings: Settings, window: DataWindow, timeout_s: float = 300.0
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Read the events and labels topics and join them (see :func:`join_labels`).

    Records that break their contract (garbage, naive or out-of-range times: the events went to the dead-letter
    topic upstream) are skipped and counted (``invalid_events``, ``invalid_labels`` and
    ``driftloop_skipped_records_total``); labels the model does not know and labels of events not in the window
    are counted by :func:`join_labels`. No record makes the read fail.

    Raises:
        DatasetError: a topic cannot be read.
    """
    since = window.start - CLOCK_SKEW
    invalid = {"invalid_events": 0, "invalid_labels": 0}
    skipped = SkippedRecords()

    def valid(topic: str, parse, counter: str) -> Iterable:
        name = settings.kafka.topic(topic)
        for msg in read_topic(settings, name, since=since, timeout_s=timeout_s):
            try:
                yield parse(msg.value())
            except InvalidRecord as exc:
                invalid[counter] += 1
                skipped.skip(
                    topic, exc.reason, topic_name=name, partition=msg.partition(), offset=msg.offset(), stage="training"
                )

    def events() -> Iterable[Event]:
        return valid(EVENTS_TOPIC, parse_event, "invalid_events")

    def labels() -> Iterable[Label]:
        return valid(LABELS_TOPIC, parse_label, "invalid_labels")

    try:
        frame, stats = join_labels(list(events()), list(labels()), tuple(settings.training.labels), window)
    except SnapshotError as exc:
        raise DatasetError(str(exc)) from exc
    return frame, {**stats, **invalid}


# --- features --------------------------------------------------------------------------------------------------


def attach_features(store: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Add the ``inference_v1`` features as of just before each row's ``event_timestamp`` (Feast point-in-time).

    Just before: the feature worker pushes each event's own row at the event's time, while the inference worker
    reads the store as that event arrives and so sees the entity's previous row. Training joins what serving sees.

    Args:
        store: an applied ``feast.FeatureStore``.
        frame: at least ``entity_id`` and ``event_timestamp``.

    Returns:
        ``frame`` with one float column per feature, in ``FEATURE_NAMES`` order; NaN where Feast knows no value.
    """
    from features import historical_features  # Feast is heavy: only imported when a store is used

    if frame.empty:
        return frame.assign(**{name: pd.Series(dtype="float64") for name in FEATURE_NAMES})
    as_of = frame[["entity_id", "event_timestamp"]].assign(
        event_timestamp=pd.to_datetime(frame["event_timestamp"], utc=True) - pd.Timedelta(microseconds=1)
    )
    joined = historical_features(store, as_of)
    result = frame.reset_index(drop=True).copy()
    for name in FEATURE_NAMES:
        result[name] = pd.to_numeric(joined[name], errors="coerce").astype("float64").to_numpy()
    return result


def load_dataset(settings: Settings, window: DataWindow, store: Any | None = None) -> Dataset:
    """Labelled events of ``window`` with point-in-time features from the Feast store.

    Args:
        settings: Kafka (events, labels), Feast (``settings.feast_dir``) and ``settings.training.labels``.
        window: the events' time window.
        store: an applied FeatureStore; default: the one the settings describe.

    Raises:
        DatasetError: a topic cannot be read, or the window holds no labelled event.
    """
    frame, counts = read_labelled_events(settings, window)
    stats: dict[str, Any] = dict(counts)
    if frame.empty:
        raise DatasetError(
            f"no labelled events between {window.start.isoformat()} and {window.end.isoformat()} ({stats})"
        )
    if store is None:
        from features import open_store

        store = open_store(settings)
    frame = attach_features(store, frame)
    stats["missing_features"] = {name: int(frame[name].isna().sum()) for name in FEATURE_NAMES}
    log.info("data set: %d labelled events in %s", len(frame), window.as_dict(), extra={"stats": stats})
    return Dataset(frame=frame, window=window, source="kafka+feast", stats=stats)


# --- split -----------------------------------------------------------------------------------------------------


def split_by_time(frame: pd.DataFrame, validation_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on the past, validate on the latest ``validation_fraction`` of the events.

    Events with the same timestamp stay on the same side, so every validation event is strictly later than every
    training event.

    Raises:
        DatasetError: either side would be empty.
    """
    ordered = frame.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)
    cut = int(round(len(ordered) * (1 - validation_fraction)))
    times = ordered["event_timestamp"]
    while 0 < cut < len(ordered) and times.iloc[cut] == times.iloc[cut - 1]:
        cut += 1
    train, validation = ordered.iloc[:cut], ordered.iloc[cut:]
    if train.empty or validation.empty:
        raise DatasetError(
            f"cannot split {len(ordered)} events by time into train and validation ({validation_fraction:.0%})"
        )
    return train.reset_index(drop=True), validation.reset_index(drop=True)


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The features as float32 ``[rows, 6]`` in contract order; missing values are 0, as the worker sends them."""
    return np.nan_to_num(frame[list(FEATURE_NAMES)].to_numpy(dtype=np.float64), nan=0.0).astype(np.float32)


def label_ids(frame: pd.DataFrame, labels: tuple[str, ...]) -> np.ndarray:
    """The labels as indices into ``labels``."""
    index = {label: i for i, label in enumerate(labels)}
    return frame["label"].map(index).to_numpy(dtype=np.int64)


# --- bootstrap -------------------------------------------------------------------------------------------------


def bootstrap_dataset(settings: Settings, samples: int | None = None, end: datetime | None = None) -> Dataset:
    """A labelled data set from the seeded synthetic generator, for the first version.

    ``samples`` events (default ``settings.training.bootstrap_samples``) of ``bootstrap_entities`` entities, evenly
    spaced over the ``bootstrap_days`` before ``end`` (default: now), seeded with ``settings.training.seed``.
    Features follow :func:`synthetic_features`.

    Raises:
        DatasetError: the generator cannot produce the configured labels (it knows exactly three).
    """
    config = settings.training
    count = samples or config.bootstrap_samples
    end = (end or datetime.now(UTC)).replace(microsecond=0)
    start = end - timedelta(days=config.bootstrap_days)
    try:
        stream = SyntheticStream(seed=config.seed, entities=config.bootstrap_entities, labels=tuple(config.labels))
    except ValueError as exc:
        raise DatasetError(f"bootstrap data for labels {list(config.labels)}: {exc}") from exc
    interval = (end - start) / count
    generated = list(stream.stream(count, start=start, interval=interval))
    window = DataWindow(start, end)
    frame, stats = join_labels(
        (item.event for item in generated),
        (item.label_record(item.event.event_time) for item in generated),
        tuple(config.labels),
        window,
    )
    frame = frame.merge(synthetic_features(frame, seed=config.seed), on="event_id", how="left")
    return Dataset(frame=frame, window=window, source="synthetic", stats=stats)


def synthetic_features(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Features of synthetic events, as the live pipeline serves them.

    The feature worker folds each event into its entity's windows (``streams.windows.EntityWindow``) and pushes that
    row; the inference worker, reading the store as an event arrives, sees the row of the entity's *previous* event
    (nothing for its first). So each event here gets the features folded at its entity's previous event. Profile
    features are left empty, as they are for live traffic until a batch job writes ``entity_profile``.

    Args:
        frame: ``event_id``, ``entity_id``, ``event_timestamp``, ``text``.
        seed: unused; kept so that callers need not change when profiles are synthesised again.

    Returns:
        ``event_id`` and the six features (null where the pipeline would have none).
    """
    windows: dict[str, EntityWindow] = {}
    served: dict[str, dict] = {}
    rows = []
    ordered = frame.sort_values(["event_timestamp", "event_id"], kind="stable")
    for event_id, entity_id, when, text in ordered[["event_id", "entity_id", "event_timestamp", "text"]].itertuples(
        index=False
    ):
        rows.append(
            {"event_id": event_id, **served.get(entity_id, {}), "account_age_days": None, "lifetime_events": None}
        )
        if entity_id not in windows:
            windows[entity_id] = EntityWindow()
        served[entity_id] = windows[entity_id].add(event_id, when.timestamp(), len(text))
    return pd.DataFrame(rows, columns=["event_id", *FEATURE_NAMES])
