"""Each `make demo` runs on topics, a feature store and faust state of its own (real broker, real Feast store)."""

from __future__ import annotations

import os

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from driftloop.demo.fresh import fresh_run
from features.store import check_health
from streams.client import client_config
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

EXPORTED = (
    "DRIFTLOOP_KAFKA__TOPIC_PREFIX",
    "DRIFTLOOP_WORKERS__FEATURES_GROUP",
    "DRIFTLOOP_FEAST__DATA_DIR",
    "DRIFTLOOP_WORKERS__FAUST_DATA_DIR",
)


def _topics(admin: AdminClient) -> set[str]:
    return set(admin.list_topics(timeout=15).topics)


def test_a_run_gets_fresh_topics_and_store_and_earlier_runs_are_deleted(settings_factory, tmp_path, monkeypatch):
    for name in EXPORTED:  # restored after the test: fresh_run exports them for the workers it will start
        monkeypatch.delenv(name, raising=False)
    base = settings_factory(workers={"features_group": f"features-{tmp_path.name}"})
    admin = AdminClient(client_config(base))
    prefix, group = base.kafka.topic_prefix, base.workers.features_group
    earlier = [f"{prefix}demo-20260101000000-events-v1", f"{group}-demo-20260101000000-entity-windows-changelog"]
    kept = [f"{prefix}demo-notes", f"{prefix}events-v1"]  # not a demo run's: never touched
    for future in admin.create_topics([NewTopic(name, 1, 1) for name in earlier + kept]).values():
        future.result(timeout=30)
    out = tmp_path / "demo"
    (out / "feast").mkdir(parents=True)
    (out / "feast" / "leftover").write_text("an earlier run's store")

    fresh = fresh_run(base, out)

    assert fresh.kafka.topic_prefix.startswith(f"{prefix}demo-") and fresh.kafka.topic_prefix != prefix
    assert fresh.workers.features_group.startswith(f"{group}-demo-")
    assert fresh.feast_dir == (out / "feast").resolve() and not (out / "feast" / "leftover").exists()
    assert "entity_stream_stats" in check_health(fresh)
    assert {fresh.kafka.topic(name) for name in fresh.kafka.topics} <= _topics(admin)
    wait_until(lambda: not set(earlier) & _topics(admin), 60, "the earlier run's topics deleted")
    assert set(kept) <= _topics(admin)
    assert os.environ["DRIFTLOOP_KAFKA__TOPIC_PREFIX"] == fresh.kafka.topic_prefix
    assert os.environ["DRIFTLOOP_FEAST__DATA_DIR"] == str(fresh.feast_dir)
