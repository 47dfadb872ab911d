"""A demo run of its own: topics, feature store and faust state that no earlier run on the same stack touched.

Each `make demo` tells the same story from the same start, however often it runs on one stack. Shared state would
change the story: an hour's and a day's event counts per entity would hold the earlier runs' traffic (the monitor
rightly sees that as data drift against a version bootstrapped on a fresh store, before any drift is injected),
and the topics would hold earlier runs' labels and predictions. The run's topics carry the prefix
``<kafka.topic_prefix>demo-<run>-``, its faust app is ``<workers.features_group>-demo-<run>``, and the Feast store
and faust data live in ``<out>/feast`` and ``<out>/faust``, emptied first. Topics of earlier demo runs are deleted.
The model repository is shared: each run bootstraps its own version there.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from streams.client import client_config
from streams.topics import ensure_topics

log = logging.getLogger(__name__)

DEMO_MARK = "demo-"


def fresh_run(settings: Settings, out_dir: Path) -> Settings:
    """Settings of a new demo run (also exported to this process's environment, which the workers inherit), with
    its topics created and its Feast repository applied; earlier demo runs' topics are deleted."""
    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    prefix = f"{settings.kafka.topic_prefix}{DEMO_MARK}{run}-"
    group = f"{settings.workers.features_group}-{DEMO_MARK}{run}"
    feast_dir, faust_dir = (out_dir / "feast").resolve(), (out_dir / "faust").resolve()
    for folder in (feast_dir, faust_dir):
        shutil.rmtree(folder, ignore_errors=True)
    fresh = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topic_prefix": prefix}),
            "feast": settings.feast.model_copy(update={"data_dir": feast_dir}),
            "workers": settings.workers.model_copy(update={"features_group": group, "faust_data_dir": faust_dir}),
        }
    )
    os.environ.update(  # the workers' processes: the environment wins over their --config file
        {
            "DRIFTLOOP_KAFKA__TOPIC_PREFIX": prefix,
            "DRIFTLOOP_WORKERS__FEATURES_GROUP": group,
            "DRIFTLOOP_FEAST__DATA_DIR": str(feast_dir),
            "DRIFTLOOP_WORKERS__FAUST_DATA_DIR": str(faust_dir),
        }
    )
    _delete_earlier_runs(settings, keep=(prefix, group))
    ensure_topics(fresh)
    from features.store import apply_repo  # imports feast: only here

    apply_repo(fresh)
    return fresh


def _delete_earlier_runs(settings: Settings, keep: tuple[str, ...]) -> None:
    """Delete the topics of earlier demo runs (the run's prefix, and faust's topics named after its app)."""
    runs = re.compile(
        rf"^(?:{re.escape(settings.kafka.topic_prefix)}{DEMO_MARK}\d{{14}}-"
        rf"|{re.escape(settings.workers.features_group)}-{DEMO_MARK}\d{{14}})"
    )
    admin = AdminClient(client_config(settings))
    try:
        names = admin.list_topics(timeout=15).topics
    except KafkaException as exc:
        log.warning("could not list topics to delete earlier demo runs: %s", exc)
        return
    stale = [name for name in names if runs.match(name) and not name.startswith(keep)]
    if not stale:
        return
    for name, future in admin.delete_topics(stale, operation_timeout=30).items():
        try:
            future.result(timeout=60)
        except Exception as exc:  # noqa: BLE001 - a topic left behind costs disk, not the run
            log.warning("could not delete topic %s of an earlier demo run: %s", name, exc)
    log.info("deleted %d topics of earlier demo runs", len(stale))
