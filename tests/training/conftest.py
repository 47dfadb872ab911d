"""Fixtures of the training tests: fast settings (the tiny BERT), one trained tiny version per session, a Feast store.

The tiny encoder is a random 2-layer, 64-wide BERT with MiniLM's tokenizer (offline); on the synthetic data it
reaches ~100% validation accuracy in three short epochs.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from foundation.settings import Settings, load_settings
from training.dataset import bootstrap_dataset, split_by_time
from training.pipeline import BuiltVersion, build_version

TINY_TRAINING = {
    "encoder": "tiny",
    "epochs": 3,
    "learning_rate": 3e-3,
    "batch_size": 32,
    "bootstrap_samples": 300,
    "min_samples": 20,
    "reference_size": 40,
    "retire_grace_s": 0,
    "load_timeout_s": 90,
}


@dataclass(frozen=True)
class TinyVersion:
    """A built (unpublished) tiny version and the holdout it was scored on."""

    built: BuiltVersion
    holdout: pd.DataFrame
    settings: Settings

    @property
    def path(self) -> Path:
        return self.built.path

    def copy_to(self, dest: Path) -> Path:
        shutil.copytree(self.path, dest)
        return dest


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> TinyVersion:
    """One tiny version trained on the synthetic bootstrap set, exported to a temporary folder."""
    settings = load_settings(training=TINY_TRAINING)
    dataset = bootstrap_dataset(settings)
    _, holdout = split_by_time(dataset.frame, settings.training.validation_fraction)
    dest = tmp_path_factory.mktemp("tiny-version") / "built"
    built = build_version(settings, dataset, dest, trigger_id="test", progress=False)
    return TinyVersion(built, holdout, settings)


@pytest.fixture
def publish_settings(settings_factory, triton_server) -> Callable[..., Settings]:
    """Settings for publishing to the test Triton server under a model name of this test's own.

    Tests that need to write into the server's repository are skipped against an external server.
    """
    if triton_server.repository is None:
        pytest.skip("publishing needs the test server's model repository on this machine")
    name = f"classifier_{uuid.uuid4().hex[:8]}"

    def make(**training: object) -> Settings:
        return settings_factory(
            triton={
                "url": triton_server.http,
                "grpc_url": triton_server.grpc,
                "model_repository": triton_server.repository,
                "model_name": name,
            },
            training={**TINY_TRAINING, **training},
        )

    return make


@pytest.fixture
def retrain_settings(settings_factory, tmp_path) -> Callable[..., Settings]:
    """Settings of a retraining consumer of its own (group, model repository under ``tmp_path``) with no Triton to
    reach: ``retrain_settings(**retrain)`` overrides ``retrain.*``."""

    def make(**retrain) -> Settings:
        unreachable = "127.0.0.1:1"
        return settings_factory(
            triton={
                "model_repository": tmp_path / "repo",
                "model_name": "classifier",
                "url": unreachable,
                "grpc_url": unreachable,
            },
            retrain={"group_id": f"retrain-{uuid.uuid4().hex[:6]}", "retry_after_s": 0, "settle_s": 0, **retrain},
        )

    return make


@pytest.fixture
def models_list() -> Callable[..., str]:
    """``driftloop models list [ARGS]`` run against a settings' topics and model repository: ``models_list(settings,
    "--json")`` returns its output (the command must succeed)."""
    import click
    from click.testing import CliRunner

    from driftloop.commands.context import CommandContext
    from driftloop.commands.models import models_group

    @click.group()
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        ctx.obj = CommandContext(None, None, "WARNING")

    cli.add_command(models_group)

    def run(settings: Settings, *args: str) -> str:
        env = {
            "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
            "DRIFTLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "DRIFTLOOP_TRITON__URL": settings.triton.url or "",
            "DRIFTLOOP_TRITON__GRPC_URL": settings.triton.grpc_url or "",
            "DRIFTLOOP_TRITON__MODEL_REPOSITORY": str(settings.triton.model_repository),
            "DRIFTLOOP_TRITON__MODEL_NAME": settings.triton.model_name,
        }
        result = CliRunner().invoke(cli, ["models", "list", *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return run
