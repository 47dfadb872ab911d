"""Feast definitions of driftloop: one entity, its sources, two feature views and the serving contract.

Import-safe (``feast apply`` imports every ``.py`` file of the repository): only Feast objects are built here.
All definitions live in this one module because the Feast CLI imports repository files as top-level modules
(``definitions``) while driftloop imports them as ``features.definitions``; objects shared across several
modules would be registered twice under the CLI.

File paths are relative: Feast resolves them against ``RepoConfig.repo_path``, which driftloop sets to
``settings.feast_dir`` (see :func:`features.store.repo_config`).
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, StreamFeatureView, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float32, Int64, String

entity = Entity(
    name="entity",
    join_keys=["entity_id"],
    value_type=ValueType.STRING,
    description="The producer of events; the Kafka key of the events topic.",
)

entity_stream_stats_source = FileSource(
    name="entity_stream_stats_source",
    path="data/entity_stream_stats",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Offline copy of every push to entity_stream_push: a folder of parquet parts, one per push "
    "(features.offline_parts), so that many feature workers append at once.",
)

entity_stream_push = PushSource(
    name="entity_stream_push",
    batch_source=entity_stream_stats_source,
    description="Windowed per-entity aggregates pushed by the streams workers.",
)

entity_stream_stats = StreamFeatureView(
    name="entity_stream_stats",
    source=entity_stream_push,
    entities=[entity],
    ttl=timedelta(days=2),
    online=True,
    offline=True,
    schema=[
        Field(name="entity_id", dtype=String),
        Field(name="msg_count_1h", dtype=Int64),
        Field(name="msg_count_24h", dtype=Int64),
        Field(name="mean_text_length", dtype=Float32),
        Field(name="seconds_since_last_event", dtype=Float32),
    ],
    description="Per-entity stream aggregates over sliding windows.",
)

entity_profile_source = FileSource(
    name="entity_profile_source",
    path="data/entity_profile.parquet",
    timestamp_field="event_timestamp",
    description="Slowly changing per-entity profile, written by batch jobs.",
)

entity_profile = FeatureView(
    name="entity_profile",
    source=entity_profile_source,
    entities=[entity],
    ttl=timedelta(days=30),
    online=True,
    schema=[
        Field(name="entity_id", dtype=String),
        Field(name="account_age_days", dtype=Float32),
        Field(name="lifetime_events", dtype=Int64),
    ],
    description="Per-entity profile features.",
)

inference_v1 = FeatureService(
    name="inference_v1",
    features=[entity_stream_stats, entity_profile],
    description="Features the classifier reads at inference time and training reads point-in-time.",
)
