"""Against the real broker: a retraining run started by a data-drift alert waits for its post-onset labels (counted
from the events and labels topics), shows the wait in ``driftloop models list``, then trains on the window anchored
at the onset; a resolve that comes first drops the waiting run. The training function is injected (the window it is
given is what is checked); the label count, the drift topic and the consumer group are real.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from foundation.settings import Settings
from streams import KafkaProducer, Record, ensure_topics
from streams.schemas import DriftEvent
from streams.synthetic import SyntheticStream
from tests.helpers import drift_event, wait_until
from tests.streams.support import group_caught_up
from training.dataset import DataWindow
from training.exceptions import TrainingError
from training.repository import ModelRepository
from training.retrain import Retrainer, RunOutcome

MODEL = "classifier"
NEEDED = 20

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class Train:
    """Records what the run trains on, then ends it (no Feast, Triton or canary in this test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, DataWindow]] = []

    def __call__(self, settings, *, window, trigger_id, **kwargs) -> None:
        self.calls.append((trigger_id, window))
        raise TrainingError("the test stops here: it checks what the run trained on")


def _settings(retrain_settings) -> Settings:
    settings = retrain_settings(lookback_s=10, min_post_drift_labels=NEEDED, label_poll_s=0.5, label_wait_timeout_s=180)
    ensure_topics(settings)
    return settings


def _drift(event_id: str, onset: datetime, status: str = "firing") -> DriftEvent:
    return drift_event(
        event_id,
        datetime.now(UTC),
        kind="data",
        status=status,
        window_start=onset,
        size=400,
        labelled=0,
        metrics={"drift_share": 0.8},
        drifted_columns=("text_length",),
    )


def _produce(settings: Settings, topic: str, payloads: list[tuple[bytes, bytes]]) -> None:
    with KafkaProducer(settings) as producer:
        producer.produce_batch([Record(settings.kafka.topic(topic), value, key=key) for key, value in payloads])


class Running:
    """The retraining consumer in a thread, with its outcomes."""

    def __init__(self, settings: Settings, train: Train) -> None:
        self.outcomes: list[RunOutcome] = []
        self.errors: list[BaseException] = []
        self.retrainer = Retrainer(settings, train=train, on_outcome=self.outcomes.append)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.retrainer.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.retrainer.stop()
        self.thread.join(30)


def _waiting(settings: Settings, run_id: str) -> dict | None:
    runs = [r for r in ModelRepository(settings).runs(5) if r["run"] == run_id]
    return runs[0] if runs and runs[0]["status"] == "waiting_for_labels" else None


def test_a_data_drift_run_waits_for_late_labels_then_trains_from_the_onset(
    retrain_settings, models_list, tmp_path
) -> None:
    settings = _settings(retrain_settings)
    onset = datetime.now(UTC) - timedelta(seconds=30)
    stream = SyntheticStream(seed=3, entities=10)
    before = list(stream.stream(15, start=onset - timedelta(seconds=8), interval=timedelta(milliseconds=400)))
    after = list(stream.stream(30, start=onset + timedelta(seconds=1), interval=timedelta(milliseconds=500)))
    _produce(settings, "events-v1", [(i.event.entity_id.encode(), i.event.to_bytes()) for i in before + after])
    # Labels of the events before the drift are in; those after it come late.
    _produce(settings, "labels-v1", [(i.event.event_id.encode(), i.label_record().to_bytes()) for i in before])
    _produce(settings, "drift-v1", [(MODEL.encode(), _drift("data-1", onset).to_bytes())])

    train = Train()
    with Running(settings, train) as running:
        record = wait_until(lambda: _waiting(settings, "data-1"), 60, "the run waiting for labels")
        assert record["labels"] == {"labelled": 0, "needed": NEEDED}
        assert record["onset"] == onset.isoformat() and train.calls == []
        # Waiting, the run is recorded: its drift event is committed (a restart resumes it from the run log).
        wait_until(
            lambda: group_caught_up(settings, settings.retrain.group_id, settings.kafka.topic("drift-v1")),
            60,
            "the drift event committed",
        )
        text = models_list(settings)
        assert "waiting_for_labels" in text and f"0 of {NEEDED} labelled events since the onset" in text

        # The late labels: too few at first, then enough.
        _produce(
            settings,
            "labels-v1",
            [(i.event.event_id.encode(), i.label_record().to_bytes()) for i in after[: NEEDED - 5]],
        )
        wait_until(
            lambda: (_waiting(settings, "data-1") or {}).get("labels", {}).get("labelled") == NEEDED - 5,
            60,
            "the first late labels counted",
        )
        assert train.calls == []
        _produce(
            settings,
            "labels-v1",
            [(i.event.event_id.encode(), i.label_record().to_bytes()) for i in after[NEEDED - 5 :]],
        )
        wait_until(lambda: bool(running.outcomes) or bool(running.errors), 60, "the run's outcome")

    assert not running.errors, running.errors
    assert [(t, w.start) for t, w in train.calls] == [("data-1", onset - timedelta(seconds=10))]
    assert running.outcomes[0].status == "failed" and "the test stops here" in running.outcomes[0].detail
    rows = [r for r in ModelRepository(settings).runs(5) if r["run"] == "data-1"]
    assert rows[0]["status"] == "failed" and rows[0]["labels"]["labelled"] >= NEEDED


def test_a_resolve_drops_the_run_that_waits_for_labels(retrain_settings, models_list, tmp_path) -> None:
    settings = _settings(retrain_settings)
    onset = datetime.now(UTC) - timedelta(seconds=20)
    _produce(settings, "drift-v1", [(MODEL.encode(), _drift("data-2", onset).to_bytes())])

    train = Train()
    with Running(settings, train) as running:
        wait_until(lambda: _waiting(settings, "data-2"), 60, "the run waiting for labels")
        resolved = _drift("data-2-resolved", onset, status="resolved").model_copy(update={"firing_event_id": "data-2"})
        _produce(settings, "drift-v1", [(MODEL.encode(), resolved.to_bytes())])
        wait_until(lambda: bool(running.outcomes) or bool(running.errors), 60, "the run dropped")
        wait_until(
            lambda: group_caught_up(settings, settings.retrain.group_id, settings.kafka.topic("drift-v1")),
            60,
            "the resolve committed",
        )

    assert not running.errors, running.errors
    assert running.outcomes[0].status == "dropped" and train.calls == []
    assert "dropped" in models_list(settings)
