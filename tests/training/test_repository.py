"""The model folder in the repository: config rendering, version numbers, install, prune, metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import training
from foundation.settings import load_settings
from training.evaluation import evaluate
from training.exceptions import PublishError
from training.repository import STAGING_PREFIX, ModelRepository, _host, render_config, served_versions

pytestmark = pytest.mark.unit


def test_exports_are_sorted_and_exist() -> None:
    assert training.__all__ == sorted(training.__all__)
    assert all(hasattr(training, name) for name in training.__all__)


def test_config_follows_the_contract() -> None:
    text = render_config("classifier", 3, [4, 2, 4], max_queue_delay_us=500, instance_count=2, cpu_engine="torch")

    assert served_versions(text) == [2, 4]
    for line in (
        'name: "classifier"',
        'backend: "python"',
        "max_batch_size: 64",
        '{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }',
        '{ name: "FEATURES" data_type: TYPE_FP32 dims: [ 6 ] }',
        '{ name: "PROBS" data_type: TYPE_FP32 dims: [ 3 ] }',
        "dynamic_batching { max_queue_delay_microseconds: 500 }",
        "instance_group [ { kind: KIND_AUTO count: 2 } ]",
        '{ key: "cpu_threads" value: { string_value: "1" } }',
        '{ key: "cpu_engine" value: { string_value: "torch" } }',
    ):
        assert line in text
    with pytest.raises(ValueError):
        render_config("classifier", 3, [])
    assert served_versions("name: 'x'") == []


def test_versions_install_prune_and_numbers(tmp_path) -> None:
    settings = load_settings(triton={"model_repository": tmp_path, "model_name": "m"})
    repo = ModelRepository(settings)
    assert repo.versions() == [] and repo.served() == [] and repo.next_version() == 1

    for version in (1, 2, 3, 4):
        build = repo.staging_dir()
        build.mkdir()
        (build / "metadata.json").write_text(f'{{"version": {version}}}', encoding="utf-8")
        repo.install(build, version)
    (repo.model_dir / "notes").mkdir()
    assert repo.versions() == [1, 2, 3, 4]
    assert repo.metadata(3) == {"version": 3} and repo.metadata(9) is None
    assert repo.next_version(None, 7) == 8 and repo.next_version(2) == 5
    assert repo.issue() == 5 and repo.issued() == 5
    assert repo.next_version() == 6  # 5 was handed out: never again, even without a folder

    clash = repo.staging_dir()
    clash.mkdir()
    with pytest.raises(PublishError, match="already exists"):
        repo.install(clash, 4)

    repo.write_config([1, 4], n_labels=3)
    assert repo.served() == [1, 4]
    assert repo.prune(keep=2, protect={1}) == [2]
    assert repo.versions() == [1, 3, 4]
    assert not list(repo.model_dir.glob(".trash-*"))
    repo.write_config([], n_labels=3)
    assert not repo.config_path.exists()


def test_metrics_match_a_hand_computed_example() -> None:
    labels = ("a", "b", "c")
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3

    metrics = evaluate(probs, y_true, labels)

    assert metrics.samples == 6 and metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.per_class["a"].precision == pytest.approx(0.5)
    assert metrics.per_class["a"].recall == pytest.approx(0.5)
    assert metrics.per_class["b"].precision == pytest.approx(2 / 3) and metrics.per_class["b"].recall == 1.0
    assert metrics.per_class["c"].f1 == pytest.approx(2 / 3)
    assert metrics.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics.log_loss == pytest.approx(-(4 * np.log(0.8 + 0.2 / 3) + 2 * np.log(0.2 / 3)) / 6)
    assert evaluate(np.zeros((0, 3)), np.zeros(0, dtype=int), labels).samples == 0


def test_staging_folders_of_dead_builds_are_removed_and_live_ones_kept(tmp_path) -> None:
    repo = ModelRepository(load_settings(triton={"model_repository": tmp_path, "model_name": "classifier"}))
    ours = repo.staging_dir()
    ours.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = repo.model_dir / f"{STAGING_PREFIX}{_host()}-{int(dead.stdout)}.1-aaaaaaaaaaaa"
    reused = repo.model_dir / f"{STAGING_PREFIX}{_host()}-{os.getpid()}.1-bbbbbbbbbbbb"  # our pid, another start
    foreign = repo.model_dir / f"{STAGING_PREFIX}otherhost-1.1-cccccccccccc"
    legacy_old, legacy_new = repo.model_dir / f"{STAGING_PREFIX}0123456789ab", repo.model_dir / f"{STAGING_PREFIX}ba98"
    for folder in (killed, reused, foreign, legacy_old, legacy_new):
        (folder / "tokenizer").mkdir(parents=True)
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(legacy_old, (day_ago, day_ago))

    removed = repo.remove_stale_staging()

    assert sorted(removed) == sorted([killed.name, reused.name, legacy_old.name])
    assert ours.exists() and foreign.exists() and legacy_new.exists()
