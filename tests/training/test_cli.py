"""``driftloop train`` and ``driftloop models`` against the real broker, Feast store and Triton server.

The story: a bootstrap version becomes champion; the concept drifts; a retrain on the drifted, labelled events
(features from Feast, point-in-time) warm-starts from the champion, is compared with it on the same holdout and
published as candidate; it is promoted, then rolled back.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from driftloop.commands.context import CommandContext
from driftloop.commands.models import models_group
from driftloop.commands.train import train_command
from features import apply_repo, push_stream_features
from streams import KafkaProducer, Record, ensure_topics
from streams.synthetic import SyntheticStream
from streams.windows import add_event

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning", "ignore::FutureWarning"),
]


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    ctx.obj = CommandContext(None, None, "WARNING")


cli.add_command(train_command)
cli.add_command(models_group)


def _env(settings) -> dict[str, str]:
    env = {
        "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "DRIFTLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "DRIFTLOOP_TRITON__URL": settings.triton_http,
        "DRIFTLOOP_TRITON__GRPC_URL": settings.triton_grpc,
        "DRIFTLOOP_TRITON__MODEL_REPOSITORY": str(settings.triton.model_repository),
        "DRIFTLOOP_TRITON__MODEL_NAME": settings.triton.model_name,
        "DRIFTLOOP_FEAST__DATA_DIR": str(settings.feast.data_dir),
    }
    env.update(
        {f"DRIFTLOOP_TRAINING__{k.upper()}": str(v) for k, v in settings.training.model_dump().items() if k != "labels"}
    )
    return env


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _produce_drifted_events(settings, start: datetime, count: int) -> None:
    generated = list(
        SyntheticStream(seed=11, entities=8).stream(count, start=start, interval=timedelta(minutes=1), drift_at=0)
    )
    records = [
        Record(settings.kafka.topic("events-v1"), item.event.to_bytes(), key=item.event.entity_id.encode())
        for item in generated
    ]
    records += [
        Record(settings.kafka.topic("labels-v1"), item.label_record().to_bytes(), key=item.event.event_id.encode())
        for item in generated
    ]
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)
    # The rows the feature worker would have pushed: one per event, folded with its own window code.
    states: dict[str, dict] = {}
    rows = []
    for item in sorted(generated, key=lambda i: i.event.event_time):
        event = item.event
        states[event.entity_id], features = add_event(
            states.get(event.entity_id), event.event_id, event.event_time.timestamp(), len(event.text)
        )
        rows.append({"entity_id": event.entity_id, "event_timestamp": event.event_time, **features})
    push_stream_features(apply_repo(settings), pd.DataFrame(rows))


def test_bootstrap_retrain_promote_and_rollback(publish_settings, tmp_path, restore_logging) -> None:
    settings = publish_settings()
    feast = settings.feast.model_copy(update={"data_dir": tmp_path / "feast"})
    settings = settings.model_copy(update={"feast": feast})
    ensure_topics(settings)
    runner = CliRunner()
    env = _env(settings)

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    out = run("train", "--bootstrap", "--no-progress")
    assert "version 1 published" in out and "promoted to champion" in out and "macro-F1" in out

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    _produce_drifted_events(settings, start, 150)
    retrain = json.loads(
        run(
            "train",
            "--since",
            (start - timedelta(minutes=1)).isoformat(),
            "--until",
            datetime.now(UTC).isoformat(),
            "--trigger-id",
            "drift-42",
            "--promote",
            "never",
            "--no-progress",
            "--json",
        )
    )
    assert retrain["version"] == 2 and retrain["parent_version"] == 1 and not retrain["promoted"]
    assert retrain["state"]["champion"] == 1 and retrain["state"]["candidate"] == 2
    assert retrain["champion_metrics"]["version"] == 1
    assert retrain["champion_metrics"]["samples"] == retrain["metrics"]["samples"] == 30
    # The concept drifted: the retrained candidate beats the champion on the same (drifted) holdout.
    assert retrain["metrics"]["accuracy"] > retrain["champion_metrics"]["accuracy"]
    metadata = json.loads(
        (settings.triton.model_repository / settings.triton.model_name / "2" / "metadata.json").read_bytes()
    )
    assert metadata["trigger_id"] == "drift-42" and metadata["data_window"]["source"] == "kafka+feast"
    assert metadata["encoder"]["initialised_from_version"] == 1
    # Each of the 8 entities' first event has no earlier row: serving saw nothing for it either.
    assert metadata["samples"]["dataset"]["missing_features"]["msg_count_1h"] == 8

    rows = [json.loads(line) for line in run("models", "list", "--json").splitlines()]
    assert {r["kind"] for r in rows} == {"version"}  # no retraining runs yet
    assert [(r["version"], r["role"], r["triton"]) for r in rows] == [
        (2, "candidate", "READY"),
        (1, "champion", "READY"),
    ]
    assert "champion 2 (previous 1)" in run("models", "promote", "--reason", "beats the champion")
    assert "champion 1 (rolled back)" in run("models", "rollback")
    assert "no previous champion" in run("models", "rollback", code=1)
    assert "not the candidate" in run("models", "withdraw", code=1)
    listing = run("models", "list")
    assert "champion 1, candidate None" in listing and "v2" in listing and "drift-42" in listing


def test_train_without_data_fails_cleanly(publish_settings, tmp_path, restore_logging) -> None:
    settings = publish_settings()
    ensure_topics(settings)
    env = _env(settings) | {"DRIFTLOOP_FEAST__DATA_DIR": str(tmp_path / "feast")}

    result = CliRunner().invoke(cli, ["train", "--since", "2001-01-01T00:00:00Z", "--until", "2001-01-02"], env=env)

    assert result.exit_code == 1
    assert "no labelled events between 2001-01-01" in result.output
    bad = CliRunner().invoke(cli, ["train", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "ISO 8601" in bad.output
