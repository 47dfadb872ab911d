"""SIGKILL of the monitoring worker while its drift alerts are open, with predictions still flowing.

The monitor runs as a process (``driftloop monitor``) on the real broker. A drift opens its three alerts (data,
prediction, performance); the worker is killed and started again while the drift goes on; then the drift clears.
The restarted worker reopens its alerts from the drift topic, so it must neither open them a second time (a second
page, a second retraining) nor leave them open when the drift clears: each alert resolves once, against the event
that opened it. Accounting in alerts: opened (produced), resolved (predicted), never resolved (lost), opened twice
(duplicates).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter

import pytest

from monitoring.synthetic import WordModel, version_metadata, write_version_metadata
from streams import ensure_topics
from streams.synthetic import SyntheticStream
from tests.helpers import wait_until
from tests.monitoring.kafka_helpers import DriftTopic, produce_champion, produce_predictions
from tests.streams.support import group_caught_up

pytestmark = pytest.mark.chaos

# Labels may be read a batch after their predictions: the time-based check (every 2 s) judges the labelled window.
MONITORING = {
    "window_size": 300,
    "min_window": 200,
    "check_every_events": 100,
    "check_interval_s": 2.0,
    "num_threshold": 0.01,
    "hysteresis_checks": 2,
    "resolve_checks": 2,
    "min_labelled": 100,
    "cooldown_s": 3600,
    "metrics_port": 0,
}


def _start(env: dict[str, str], log_path) -> subprocess.Popen:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "driftloop.cli", "monitor"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _caught_up(settings, group: str) -> bool:
    return all(group_caught_up(settings, group, settings.kafka.topic(t)) for t in ("predictions-v1", "labels-v1"))


def _wait(condition, timeout_s: float, what: str, proc: subprocess.Popen) -> None:
    wait_until(lambda: proc.poll() is not None or condition(), timeout_s, what)
    assert proc.poll() is None, f"the monitor exited with {proc.returncode} while waiting for {what}"


def test_killing_the_monitor_neither_reopens_nor_forgets_its_alerts(settings_factory, tmp_path, chaos_ledger):
    model = f"clf-{uuid.uuid4().hex[:8]}"
    group = f"monitor-{model}"
    monitoring = {**MONITORING, "group_id": group, "reports_dir": tmp_path / "reports"}
    settings = settings_factory(triton={"model_repository": tmp_path / "repo"}, monitoring=monitoring)
    ensure_topics(settings)
    classifier = WordModel(model, 1).fit(SyntheticStream(seed=1).stream(1500))
    reference = [classifier.predict(e.event) for e in SyntheticStream(seed=2).stream(600)]
    metadata = version_metadata(classifier, reference, metrics={"accuracy": 0.98, "macro_f1": 0.98})
    write_version_metadata(settings.triton.model_repository, metadata)
    produce_champion(settings, model, 1)

    def predictions(n: int, seed: int, drifted: bool):
        stream = SyntheticStream(seed=seed).stream(n, drift_at=0 if drifted else None)
        return [(classifier.predict(example.event), example.label) for example in stream]

    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "TRITON_URL")}
    env.update(
        {
            "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
            "DRIFTLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "DRIFTLOOP_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "DRIFTLOOP_TRITON__MODEL_REPOSITORY": str(settings.triton.model_repository),
            "DRIFTLOOP_MONITORING__GROUP_ID": group,
            "DRIFTLOOP_MONITORING__REPORTS_DIR": str(tmp_path / "reports"),
            **{f"DRIFTLOOP_MONITORING__{k.upper()}": str(v) for k, v in MONITORING.items()},
        }
    )
    log_path = tmp_path / "monitor.log"
    drift = DriftTopic(settings)
    proc = _start(env, log_path)
    try:
        produce_predictions(settings, predictions(400, seed=17, drifted=False))
        _wait(lambda: _caught_up(settings, group), 90, "the stable phase committed", proc)
        assert drift.poll() == []
        produce_predictions(settings, predictions(600, seed=12, drifted=True))
        kinds = {"data", "prediction", "performance"}
        opened = drift.wait_for(lambda ev: {e.kind for e in ev if e.status == "firing"} == kinds, 120)
        _wait(lambda: _caught_up(settings, group), 60, "the drifted phase committed", proc)

        # Killed mid-stream: the drift goes on while it is down and after it is back.
        produce_predictions(settings, predictions(200, seed=14, drifted=True))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        produce_predictions(settings, predictions(200, seed=15, drifted=True))
        proc = _start(env, log_path)
        _wait(lambda: _caught_up(settings, group), 120, "the restarted monitor caught up", proc)

        produce_predictions(settings, predictions(800, seed=13, drifted=False))
        drift.wait_for(lambda ev: sum(e.status == "resolved" for e in ev) >= 3, 120)
        _wait(lambda: _caught_up(settings, group), 60, "the clearing phase committed", proc)
        events = drift.poll()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        drift.close()

    firing = [e for e in events if e.status == "firing"]
    resolved = [e for e in events if e.status == "resolved"]
    opened_ids = {e.id for e in opened if e.status == "firing"}
    per_kind = Counter(e.kind for e in firing)
    chaos_ledger.record(
        "monitor-sigkill",
        produced=len(opened_ids),
        predicted=len(resolved),
        dead_lettered=0,
        lost=len(opened_ids - {e.firing_event_id for e in resolved}),
        duplicates=sum(n - 1 for n in per_kind.values()),
        unit="drift alerts",
        restarts=1,
        alerts_opened=dict(per_kind),
    )
    assert all(n == 1 for n in per_kind.values()), firing  # the restart opened nothing again
    assert sorted(e.firing_event_id for e in resolved) == sorted(opened_ids)  # each resolves once, the same alert
    assert "open alerts restored" in log_path.read_text(errors="replace")
