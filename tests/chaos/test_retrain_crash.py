"""SIGKILL of the retraining consumer mid-run, twice: once while it trains, once while it watches its canary.

The whole loop runs as in tests/e2e (real broker, tritonserver, Feast; the stream workers, the monitor and the
retraining consumer as processes, restarted by the demo's supervisor as Kubernetes would). The consumer commits a
drift event only when its run has ended, so each restart replays the trigger: killed while training, it trains again
(nothing was published); killed after publishing, it finds the version built for that drift and resumes its canary.
Proves: the loop still heals, no drift gets two versions, and no event is lost or fails.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from driftloop.demo import DemoPlan, run_loop
from training.repository import ModelRepository

pytestmark = pytest.mark.chaos

# Kill when the retraining consumer's log shows these, in this order (after the previous kill).
KILL_AT = ("training.pipeline: training on", "training.publish: published")


def _pid_of(config_file: Path, command: str) -> int | None:
    """The process running ``driftloop --config <config_file> <command>``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        argv = [a for a in argv if a]
        if str(config_file) in argv and argv[-1] == command:
            return int(entry.name)
    return None


class RetrainKiller(threading.Thread):
    """SIGKILLs the retraining consumer at each mark of ``KILL_AT`` that appears in its log."""

    def __init__(self, log: Path, config_file: Path) -> None:
        super().__init__(name="retrain-killer", daemon=True)
        self.log, self.config_file = log, config_file
        self.kills: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        offset = 0
        for mark in KILL_AT:
            while not self.stopping.is_set():
                text = self.log.read_text(errors="replace") if self.log.exists() else ""
                if mark in text[offset:]:
                    pid = _pid_of(self.config_file, "retrain")
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        self.kills.append(mark)
                        offset = len(text)
                        break
                time.sleep(0.1)


@pytest.mark.timeout(600)
def test_killing_the_retraining_consumer_mid_run_heals_once_and_loses_nothing(loop_settings, tmp_path, chaos_ledger):
    from training.pipeline import train_version

    settings, config_file = loop_settings
    assert train_version(settings, bootstrap=True, progress=False).version == 1
    killer = RetrainKiller(tmp_path / "demo" / "logs" / "retrain.log", config_file)
    killer.start()
    plan = DemoPlan(rate=20.0, drift_after_s=25.0, timeout_s=360.0, after_promotion_s=10.0, seed=5)
    try:
        summary = run_loop(settings, plan, config_file, tmp_path / "demo", print)
    finally:
        killer.stopping.set()

    repo = ModelRepository(settings)
    triggers = Counter((repo.metadata(v) or {}).get("trigger_id") for v in repo.versions())
    built_twice = {trigger: n for trigger, n in triggers.items() if n > 1}
    chaos_ledger.record(
        "retrain-sigkill-mid-run",
        produced=summary["events_produced"],
        predicted=summary["predictions"],
        dead_lettered=summary["failed_predictions"],
        lost=summary["events_lost"],
        duplicates=len(built_twice),
        kills=killer.kills,
        restarts=summary["restarts"],
        versions=dict(triggers),
        time_to_serve_new_version_s=summary["time_to_serve_new_version_s"],
    )
    assert killer.kills == list(KILL_AT), killer.kills
    assert summary["restarts"] == {"retrain": 2}, summary["restarts"]
    assert built_twice == {}, triggers  # the restart resumed the version it had published
    runs = repo.runs(20)  # the run log (`driftloop models list`): the replayed run ended in a promotion
    assert any(r["status"] == "promoted" and r["version"] == summary["new_version"] for r in runs), runs
    assert repo.read_intent() is None and not list(repo.model_dir.glob(".staging-*")), "leftovers of the kills"
    assert summary["new_version"] and summary["time_to_promote_s"] is not None, summary
    assert summary["accuracy_after_promotion"] > summary["accuracy_after_drift"], summary
    assert summary["failed_predictions"] == 0 and summary["events_lost"] == 0, summary
