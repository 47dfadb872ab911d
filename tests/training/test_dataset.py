"""Training sets: the label join, the time split, the synthetic bootstrap, and point-in-time features from Feast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import apply_repo, definitions, push_stream_features
from features.store import source_schema
from foundation.settings import load_settings
from streams import KafkaProducer, Record, ensure_topics
from streams.schemas import Event, Label
from training.dataset import (
    DataWindow,
    bootstrap_dataset,
    feature_matrix,
    join_labels,
    load_dataset,
    split_by_time,
    synthetic_features,
)
from training.exceptions import DatasetError
from training.servable.runtime import FEATURE_NAMES

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
LABELS = ("negative", "neutral", "positive")


def _event(event_id: str, minutes: float, entity: str = "e1", text: str = "some text") -> Event:
    return Event(event_id=event_id, entity_id=entity, event_time=T0 + timedelta(minutes=minutes), text=text)


def _label(event_id: str, label: str, minutes: float = 60) -> Label:
    return Label(event_id=event_id, label=label, labelled_at=T0 + timedelta(minutes=minutes))


@pytest.mark.unit
def test_join_labels_dedupes_prefers_the_latest_label_and_drops_the_rest() -> None:
    window = DataWindow(T0, T0 + timedelta(hours=1))
    events = [_event("a", 1), _event("b", 2), _event("a", 1), _event("c", 3), _event("d", 4), _event("late", 90)]
    labels = [
        _label("a", "positive", 10),
        _label("a", "negative", 20),  # a correction: the later label wins
        _label("a", "neutral", 5),  # an older one arriving last does not
        _label("b", "neutral"),
        _label("c", "sarcastic"),  # not a label of the model
        _label("late", "neutral"),
    ]

    frame, stats = join_labels(events, labels, LABELS, window)

    assert frame[["event_id", "label"]].values.tolist() == [["a", "negative"], ["b", "neutral"]]
    assert str(frame["event_timestamp"].dt.tz) == "UTC"
    assert stats == {
        "events": 6,
        "duplicate_events": 1,
        "outside_window": 1,
        "labels": 6,
        "unlabelled": 1,
        "unknown_label": 1,
        "labels_without_event": 1,
    }


@pytest.mark.unit
def test_split_by_time_keeps_the_holdout_strictly_later_and_ties_together() -> None:
    times = [T0 + timedelta(minutes=m) for m in (0, 1, 2, 3, 4, 5, 5, 5, 6, 7)]
    frame = pd.DataFrame({"event_id": [f"e{i}" for i in range(10)], "event_timestamp": times})

    train, validation = split_by_time(frame.sample(frac=1, random_state=1), 0.4)

    assert len(train) == 5 + 3  # the three events at minute 5 all go to training
    assert train["event_timestamp"].max() < validation["event_timestamp"].min()
    with pytest.raises(DatasetError):
        split_by_time(frame.assign(event_timestamp=T0), 0.2)


@pytest.mark.unit
def test_window_rejects_naive_and_empty_windows() -> None:
    with pytest.raises(ValueError, match="time-zone"):
        DataWindow(datetime(2026, 1, 1), datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="empty"):
        DataWindow(T0, T0)
    assert DataWindow.last(2, end=T0).start == T0 - timedelta(days=2)


@pytest.mark.unit
def test_bootstrap_is_seeded_and_balanced_enough() -> None:
    settings = load_settings(training={"bootstrap_samples": 200, "seed": 3})
    end = datetime(2026, 11, 27, tzinfo=UTC)
    first, second = bootstrap_dataset(settings, end=end), bootstrap_dataset(settings, end=end)

    pd.testing.assert_frame_equal(first.frame, second.frame)
    assert len(first.frame) == 200 and first.source == "synthetic"
    assert set(first.frame["label"]) == set(LABELS)
    assert first.frame["event_timestamp"].is_monotonic_increasing
    assert list(first.frame.columns) == ["event_id", "entity_id", "event_timestamp", "text", "label", *FEATURE_NAMES]
    other = bootstrap_dataset(load_settings(training={"bootstrap_samples": 200, "seed": 4}), end=end)
    assert not other.frame["text"].equals(first.frame["text"])
    with pytest.raises(DatasetError, match="three"):
        bootstrap_dataset(load_settings(training={"labels": ("a", "b")}))


@pytest.mark.unit
def test_synthetic_features_are_what_serving_sees_the_entitys_previous_row() -> None:
    frame = pd.DataFrame(
        {
            "event_id": ["x1", "y1", "x2", "x3", "x4"],
            "entity_id": ["x", "y", "x", "x", "x"],
            "event_timestamp": [T0 + timedelta(minutes=m) for m in (0, 10, 30, 100, 60 * 30)],
            "text": ["ab", "zzz", "abcd", "abcdef", "a"],
        }
    )
    features = synthetic_features(frame).set_index("event_id")
    counts = ["msg_count_1h", "msg_count_24h", "mean_text_length"]

    assert features.loc[["x1", "y1"]].isna().all().all()  # an entity's first event: nothing pushed yet
    assert features.loc["x2", counts].tolist() == [1, 1, 2]  # the row pushed for x1
    assert pd.isna(features.loc["x2", "seconds_since_last_event"])
    assert features.loc["x3", counts].tolist() == [2, 2, 3]  # the row pushed for x2
    assert features.loc["x3", "seconds_since_last_event"] == 30 * 60
    assert features.loc["x4", counts].tolist() == [1, 3, 4]  # the row pushed for x3
    assert features.loc["x4", "seconds_since_last_event"] == 70 * 60
    assert features[["account_age_days", "lifetime_events"]].isna().all().all()  # no profile job ran
    # Adding later events changes nothing for earlier ones.
    prefix = synthetic_features(frame.iloc[:3]).set_index("event_id")
    pd.testing.assert_frame_equal(prefix, features.loc[prefix.index])


@pytest.mark.unit
def test_feature_matrix_sends_missing_values_as_zero() -> None:
    frame = pd.DataFrame({name: [1.0, np.nan] for name in FEATURE_NAMES})
    matrix = feature_matrix(frame)
    assert matrix.dtype == np.float32 and matrix.tolist() == [[1.0] * 6, [0.0] * 6]


@pytest.fixture
def feast_settings(settings_factory, tmp_path):
    settings = settings_factory(feast={"data_dir": tmp_path / "feast"})
    ensure_topics(settings)
    return settings


def _profile(store, rows: list[tuple[str, datetime, float, int]]) -> None:
    """Write the profile view's offline file, as the batch job that owns it would."""
    schema = source_schema(definitions.entity_profile)
    columns = {
        "entity_id": [r[0] for r in rows],
        "event_timestamp": [r[1] for r in rows],
        "account_age_days": [r[2] for r in rows],
        "lifetime_events": [r[3] for r in rows],
    }
    table = pa.table({name: columns[name] for name in schema.names}, schema=schema)
    pq.write_table(table, f"{store.config.repo_path}/{definitions.entity_profile.batch_source.path}")


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning", "ignore::FutureWarning")
def test_features_are_joined_as_of_each_event_time(feast_settings) -> None:
    settings = feast_settings
    store = apply_repo(settings)
    minute = timedelta(minutes=1)
    # msg_count_1h steps 1 -> 2 -> 3 over time; the other stream features follow it.
    push_stream_features(
        store,
        pd.DataFrame(
            {
                "entity_id": ["e1", "e1", "e1"],
                "event_timestamp": [T0, T0 + 10 * minute, T0 + 20 * minute],
                "msg_count_1h": [1, 2, 3],
                "msg_count_24h": [10, 20, 30],
                "mean_text_length": [1.5, 2.5, 3.5],
                "seconds_since_last_event": [11.0, 22.0, 33.0],
            }
        ),
    )
    _profile(store, [("e1", T0 - timedelta(days=1), 100.0, 7), ("e1", T0 + 15 * minute, 200.0, 9)])
    events = {
        "before-any": _event("before-any", -5),
        "after-1": _event("after-1", 5),
        "exactly-2": _event("exactly-2", 10),
        "between-2-3": _event("between-2-3", 19),
        "after-3": _event("after-3", 25),
        "stale": _event("stale", 60 * 24 * 3),  # stream view TTL is 2 days, profile TTL 30 days
        "unknown-entity": _event("unknown-entity", 25, entity="e2"),
        "unlabelled": _event("unlabelled", 26),
    }
    records = [
        Record(settings.kafka.topic("events-v1"), e.to_bytes(), key=e.entity_id.encode()) for e in events.values()
    ]
    records += [
        Record(
            settings.kafka.topic("labels-v1"),
            _label(event_id, "neutral", 60 * 24 * 4).to_bytes(),
            key=event_id.encode(),
        )
        for event_id in events
        if event_id != "unlabelled"
    ]
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)

    dataset = load_dataset(settings, DataWindow(T0 - timedelta(hours=1), T0 + timedelta(days=4)), store)

    got = dataset.frame.set_index("event_id")
    assert sorted(got.index) == sorted(set(events) - {"unlabelled"})
    assert dataset.stats["unlabelled"] == 1
    counts = got["msg_count_1h"].to_dict()
    for unknown in ("before-any", "stale", "unknown-entity"):
        assert np.isnan(counts.pop(unknown)), unknown
    # An event at the very time of a row gets the row before it: that row is its own (the feature worker pushes
    # each event's row at the event's time), and serving saw the entity's previous one.
    assert counts == {"after-1": 1, "exactly-2": 1, "between-2-3": 2, "after-3": 3}
    assert got.loc["between-2-3", ["msg_count_24h", "mean_text_length", "seconds_since_last_event"]].tolist() == [
        20,
        2.5,
        22.0,
    ]
    ages = got["account_age_days"].to_dict()
    assert (ages["after-1"], ages["between-2-3"], ages["after-3"], ages["stale"]) == (100, 200, 200, 200)
    assert np.isnan(ages["unknown-entity"])
    assert dataset.stats["missing_features"]["msg_count_1h"] == 3
    # Missing values reach the model as 0, as the inference worker sends them.
    assert feature_matrix(got.loc[["before-any"]])[0].tolist() == [0, 0, 0, 0, 100, 7]
