"""The monitor's state, without I/O: a window, a reference and an alert state per model; checks and their events.

``Monitor`` is fed predictions, labels and champion changes, says which models are due for a check (every
``check_every_events`` predictions or ``check_interval_s`` seconds, once the window holds ``min_window``), and runs a
check: the calibrated decision of each drift kind (``monitoring.drift``), its hysteresis, an HTML report when an
alert opens or closes, and the ``DriftEvent`` records to publish and deliver. ``monitoring.worker`` wires it to Kafka
and the receivers.

Which version is served: the models topic's champion when the monitor has seen one; else the highest version seen in
champion predictions. Predictions of other versions, and of candidate or shadow roles, are not in the window. When the
champion changes the window is emptied, the new version's reference is read with its calibration (computed here, in
seconds, when the version has none or one made for other settings), and the streaks start again; an open alert stays
open until checks against the new reference clear it. Open alerts survive a restart: the worker reopens them from the
drift topic (``restore_alerts``).

A record that keeps its contract but cannot be used raises ``UnusableRecord`` (the worker dead-letters such a
prediction and skips such a label): a predicted or true label that is not one of the serving version's labels (once
its reference is read), or, with ``window_max_age_s`` set, a prediction dated so far ahead that it would empty the
window.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from foundation.settings import Settings
from monitoring.calibration import Calibration, calibrate, stored_calibration
from monitoring.changepoint import onset_time
from monitoring.drift import KINDS, DriftPolicy, DriftResult, Kind, KindResult, check_drift
from monitoring.exceptions import DriftCheckError, ReferenceSampleError, ReportError, UnusableRecord
from monitoring.metrics import MonitorMetrics
from monitoring.policy import DriftState
from monitoring.reference import PREDICTION_COLUMNS, ReferenceSample, load_reference
from monitoring.report import save_report
from monitoring.window import PendingLabels, SlidingWindow
from streams.schemas import ColumnScore, DriftEvent, Label, Prediction, WindowInfo, dedup_key

log = logging.getLogger(__name__)

ReferenceLoader = Callable[[Settings, str, int], ReferenceSample]


@dataclass
class ModelTrack:
    """What the monitor keeps for one model."""

    model: str
    window: SlidingWindow
    serving_version: int | None = None
    from_models_topic: bool = False
    reference: ReferenceSample | None = None
    calibration: Calibration | None = None
    events_since_check: int = 0
    labels_since_check: int = 0
    last_check_at: float = 0.0
    last_result: DriftResult | None = None
    states: dict[Kind, DriftState] = field(default_factory=lambda: {k: DriftState() for k in KINDS})
    report_paths: dict[Kind, str | None] = field(default_factory=dict)
    missing_reference: int | None = None  # the version whose missing reference was last logged


@dataclass(frozen=True)
class CheckOutcome:
    """A check's result and what it produced.

    Attributes:
        result: the measures.
        events: alerts that opened or closed: publish on the drift topic and deliver.
        repeats: alerts still open, with the id of the event that opened them: deliver only (Alertmanager keep-alive;
            webhooks after the cooldown).
        report_path: the HTML report saved by this check, if any.
    """

    result: DriftResult
    events: list[DriftEvent]
    repeats: list[DriftEvent]
    report_path: Path | None = None


class Monitor:
    """Windows, references and alert states of every model seen.

    Args:
        settings: root settings (``monitoring.*``, ``triton.model_repository``).
        metrics: where to record gauges; a private registry when omitted.
        clock: monotonic seconds, for the time-based schedule.
        reference_loader: reads a version's reference (``load_reference``).
        wall_clock: epoch seconds, for how long the feature store has been observing (see :meth:`note_history`).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: MonitorMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        reference_loader: ReferenceLoader = load_reference,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.config = settings.monitoring
        self.policy = DriftPolicy.from_settings(self.config)
        self.metrics = metrics or MonitorMetrics()
        self._clock = clock
        self._load_reference = reference_loader
        self._wall_clock = wall_clock
        self.history_since: float | None = None  # epoch s: the oldest prediction known to have been served
        self.tracks: dict[str, ModelTrack] = {}
        self.pending_labels = PendingLabels(self.config.pending_labels_max)
        self.observed = {"predictions": 0, "labels": 0, "skipped": 0}

    # -- input ------------------------------------------------------------------------------------------------

    def observe_prediction(self, prediction: Prediction) -> bool:
        """Add a champion prediction of the serving version to its model's window.

        Returns:
            False when it was left out (another role or version, or a redelivery).

        Raises:
            UnusableRecord: its label is not one of the serving version's, or it is dated too far ahead.
        """
        self.observed["predictions"] += 1
        if prediction.role != "champion":
            return self._skip("role")
        self._check_event_time(prediction)
        if self.history_since is None:
            self.history_since = self._wall_clock()
        track = self._track(prediction.model.name)
        version = prediction.model.version
        if track.serving_version is None or (not track.from_models_topic and version > track.serving_version):
            self._switch(track, version, from_models_topic=False)
        elif version != track.serving_version:
            return self._skip("version")
        self._check_label(track, prediction.label, "predicted")
        if prediction.event_id in track.window:
            return self._skip("duplicate")
        true_label = self.pending_labels.pop(prediction.event_id)
        if true_label is not None and not self._knows_label(track, true_label):
            true_label = None  # kept aside before the reference was read; unusable for this version
        track.window.add(prediction, true_label=true_label)
        track.events_since_check += 1
        return True

    def note_history(self, since: float) -> None:
        """Predictions have been served since ``since`` (epoch s; e.g. the predictions topic's oldest record).

        The feature store has been observing at least that long: a feature that looks back over a span is judged only
        on the events that came once the store had observed it (``monitoring.drift.mature_features``). Without a
        note, history starts at the first prediction seen.
        """
        self.history_since = since if self.history_since is None else min(self.history_since, since)

    def observe_label(self, label: Label) -> bool:
        """Attach a ground-truth label to its prediction; kept aside when the prediction has not arrived yet.

        Returns:
            True when it joined a prediction in a window.

        Raises:
            UnusableRecord: the label is not one of the labels of the version it would join (or, kept aside, of any
                version whose reference is read).
        """
        self.observed["labels"] += 1
        for track in self.tracks.values():
            if label.event_id in track.window:
                self._check_label(track, label.label, "true")
                track.window.add_label(label.event_id, label.label)
                track.labels_since_check += 1
                return True
        known = [self._known_labels(t) for t in self.tracks.values()]
        if any(known) and not any(label.label in labels for labels in known):
            raise UnusableRecord(f"unknown label: {_short(label.label)} is a label of no monitored model")
        self.pending_labels.put(label.event_id, label.label)
        return False

    def observe_champion(self, model: str, champion: int | None) -> None:
        """A models-topic record: the served version of ``model`` (None: no champion, nothing changes)."""
        if champion is None:
            return
        track = self._track(model)
        if champion != track.serving_version:
            self._switch(track, champion, from_models_topic=True)
        track.from_models_topic = True

    def restore_alerts(self, events: Iterable[DriftEvent]) -> list[DriftEvent]:
        """Reopen the alerts a previous run left open: the last drift event per alert, when it is a firing one.

        The worker calls this at start with its own output (the drift topic), so that a restart neither opens an open
        alert again (a second page, a second retraining) nor forgets to resolve it. Returns the reopened events.
        """
        last: dict[str, DriftEvent] = {}
        for event in sorted(events, key=lambda e: e.detected_at):
            last[event.dedup_key] = event
        reopened = [e for e in last.values() if e.status == "firing"]
        for event in reopened:
            track = self._track(event.model)
            state = track.states[event.kind]
            state.firing, state.started_at, state.severity, state.event_id, state.onset_at = (
                True,
                event.started_at,
                event.severity,
                event.id,
                event.onset_at,
            )
            track.report_paths[event.kind] = event.report_path
            self.metrics.firing.labels(event.model, event.kind).set(1.0)
        return reopened

    # -- schedule and check -----------------------------------------------------------------------------------

    def due(self) -> list[str]:
        """Models whose window is large enough and whose check is due: ``check_every_events`` new predictions, or
        ``check_interval_s`` seconds since the last check when a prediction or a label arrived since."""
        now = self._clock()
        return [
            t.model
            for t in self.tracks.values()
            if len(t.window) >= self.policy.min_window
            and (t.events_since_check > 0 or t.labels_since_check > 0)
            and (
                t.events_since_check >= self.config.check_every_events
                or now - t.last_check_at >= self.config.check_interval_s
            )
        ]

    def check(self, model: str, force: bool = False, save_html: bool | None = None) -> CheckOutcome | None:
        """Run one check of ``model``'s window against its serving version's reference.

        Args:
            model: the model name.
            force: check even below ``min_window``.
            save_html: save an HTML report: None (default) when an alert opens or closes, True always, False never.

        Returns:
            None when there is nothing to check (no window, no reference: logged).
        """
        track = self.tracks.get(model)
        if track is None or track.serving_version is None or not len(track.window):
            return None
        if len(track.window) < self.policy.min_window and not force:
            return None
        track.events_since_check = track.labels_since_check = 0
        track.last_check_at = self._clock()
        reference = self._reference(track)
        if reference is None:
            return None
        current = track.window.frame(reference.feature_names)
        try:
            # Forced (an on-demand report, which pages nobody): a window below min_window is judged all the same.
            policy = self.policy
            if force:
                policy = replace(policy, min_window=min(policy.min_window, len(current)))
            observed_s = None
            if self.history_since is not None:  # per event: how long the store had been observing when it came
                observed_s = [t.timestamp() - self.history_since for t in track.window.event_times()]
            result = check_drift(
                current, reference, policy, track.window.bounds(), self._calibration(track), observed_s
            )
        except DriftCheckError as exc:
            log.warning("drift check skipped", extra={"model": model, "reason": str(exc)})
            return None
        track.last_result = result
        self.metrics.observe_check(result)

        now = datetime.now(UTC)
        steps = {
            kind: track.states[kind].update(
                result.kinds[kind].detected, self.policy.hysteresis_checks, self.policy.resolve_checks
            )
            for kind in KINDS
        }
        transitions = [k for k, s in steps.items() if s in ("fired", "resolved")]
        report_path = None
        if save_html or (save_html is None and transitions):
            report_path = self._save_report(result, current, reference)

        events, repeats = [], []
        for kind, step in steps.items():
            state = track.states[kind]
            if step == "fired":
                state.started_at = now
                state.severity = result.kinds[kind].severity
                state.onset_at = self._onset(result, kind, current, reference, track.window.event_times())
                track.report_paths[kind] = str(report_path) if report_path else None
                event = self._event(result, kind, "firing", state, now, track.report_paths[kind])
                state.event_id = event.id
                events.append(event)
            elif step == "resolved":
                event = self._event(result, kind, "resolved", state, now, str(report_path) if report_path else None)
                events.append(event)
                state.started_at, state.event_id, state.onset_at = None, None, None
            elif step == "firing":  # a repeat keeps the id of the event that opened the alert
                repeats.append(
                    self._event(result, kind, "firing", state, now, track.report_paths.get(kind), state.event_id)
                )
            self.metrics.firing.labels(model, kind).set(1.0 if state.firing else 0.0)
        for event in events:
            self.metrics.events.labels(model, event.kind, event.status).inc()
            log.log(
                logging.WARNING if event.status == "firing" else logging.INFO,
                "drift alert %s",
                event.status,
                extra={
                    "model": model,
                    "version": event.version,
                    "kind": event.kind,
                    "severity": event.severity,
                    "drifted_columns": event.drifted_columns,
                    "metrics": event.metrics,
                    "event_id": event.id,
                },
            )
        log.info(
            "drift check",
            extra={
                "model": model,
                "version": result.version,
                "window": result.window.size,
                "labelled": result.window.labelled,
                "duration_s": round(result.duration_s, 4),
                **{f"{k}_drift": v.detected for k, v in result.kinds.items()},
            },
        )
        return CheckOutcome(result, events, repeats, report_path)

    # -- internals --------------------------------------------------------------------------------------------

    def _track(self, model: str) -> ModelTrack:
        track = self.tracks.get(model)
        if track is None:
            track = ModelTrack(model, SlidingWindow(self.config.window_size, self.config.window_max_age_s))
            track.last_check_at = self._clock()
            self.tracks[model] = track
        return track

    def _switch(self, track: ModelTrack, version: int, from_models_topic: bool) -> None:
        previous = track.serving_version
        track.serving_version = version
        track.from_models_topic = from_models_topic
        track.reference = None
        track.calibration = None
        track.window.clear()
        track.events_since_check = 0
        for state in track.states.values():
            state.reset_streaks()
        if previous is not None:
            log.info(
                "reference switched", extra={"model": track.model, "from_version": previous, "to_version": version}
            )

    def _check_event_time(self, prediction: Prediction) -> None:
        """With ``window_max_age_s`` set, a prediction dated further ahead than that would evict the whole window."""
        max_age_s = self.config.window_max_age_s
        if max_age_s and prediction.event_time > datetime.now(UTC) + timedelta(seconds=max_age_s):
            raise UnusableRecord(
                f"dated too far ahead: event_time {prediction.event_time.isoformat()} is more than "
                f"window_max_age_s ({max_age_s:g} s) ahead of now and would empty the window"
            )

    def _check_label(self, track: ModelTrack, label: str, which: str) -> None:
        if not self._knows_label(track, label):
            raise UnusableRecord(
                f"unknown label: {_short(label)} is not a {which} label of {track.model} v{track.serving_version}"
            )

    def _knows_label(self, track: ModelTrack, label: str) -> bool:
        labels = self._known_labels(track)
        return not labels or label in labels

    def _known_labels(self, track: ModelTrack) -> tuple[str, ...]:
        """The serving version's labels; empty while its reference is not read (then every label is accepted).

        A missing reference is looked for once per version here; checks keep looking for it (``_reference``).
        """
        if track.serving_version is None:
            return ()
        reference = track.reference
        if (reference is None or reference.version != track.serving_version) and (
            track.missing_reference != track.serving_version
        ):
            reference = self._reference(track)
        if reference is None or reference.version != track.serving_version:
            return ()
        return reference.labels

    def _skip(self, reason: str) -> bool:
        self.observed["skipped"] += 1
        self.metrics.records.labels("predictions", f"skipped_{reason}").inc()
        return False

    def _reference(self, track: ModelTrack) -> ReferenceSample | None:
        assert track.serving_version is not None
        if track.reference is None or track.reference.version != track.serving_version:
            try:
                track.reference = self._load_reference(self.settings, track.model, track.serving_version)
            except Exception as exc:  # noqa: BLE001 - a malformed reference file is a missing reference, not a crash
                reason = str(exc) if isinstance(exc, ReferenceSampleError) else f"{type(exc).__name__}: {exc}"
                if track.missing_reference != track.serving_version:
                    log.warning("no reference: checks wait for it", extra={"model": track.model, "reason": reason})
                    track.missing_reference = track.serving_version
                return None
            track.missing_reference = None
            track.calibration = None
            log.info(
                "reference loaded",
                extra={
                    "model": track.model,
                    "version": track.serving_version,
                    "rows": len(track.reference.frame),
                    "path": str(track.reference.path),
                },
            )
        return track.reference

    def _calibration(self, track: ModelTrack) -> Calibration:
        """The serving reference's calibration: the stored one when made for these settings, else computed once."""
        reference = track.reference
        assert reference is not None
        if track.calibration is None:
            track.calibration = stored_calibration(reference, self.policy)
            source = "stored"
            if track.calibration is None:
                track.calibration = calibrate(reference, self.policy)
                source = "computed"
            log.info(
                "calibration ready",
                extra={
                    "model": track.model,
                    "version": reference.version,
                    "source": source,
                    "alpha": track.calibration.alpha,
                    "thresholds": track.calibration.thresholds,
                    "duration_s": round(track.calibration.duration_s, 3),
                },
            )
        return track.calibration

    def _save_report(self, result: DriftResult, current, reference: ReferenceSample) -> Path | None:
        try:
            return save_report(
                result,
                current,
                reference,
                self.config.reports_dir,
                self.config.reports_keep,
                drift_share=self.policy.data_drift_share,
            )
        except ReportError as exc:
            log.error("drift report not saved: %s", exc, extra={"model": result.model, "reason": str(exc)})
            return None

    @staticmethod
    def _onset(
        result: DriftResult, kind: Kind, current, reference: ReferenceSample, times: list[datetime]
    ) -> datetime | None:
        """Where the fired window's most drifted column changed (``monitoring.changepoint``); None for performance
        (labels are late: its window's change point is not the drift's) or when it cannot be told."""
        drifted = result.kinds[kind].drifted_columns
        if kind == "performance" or not drifted or drifted[0] not in current.columns:
            return None
        column = drifted[0]
        return onset_time(result.statistics[column].method, reference.frame[column], current[column], times)

    @staticmethod
    def _event(
        result: DriftResult,
        kind: Kind,
        status: str,
        state: DriftState,
        now: datetime,
        report_path: str | None,
        event_id: str | None = None,
    ) -> DriftEvent:
        outcome: KindResult = result.kinds[kind]
        columns = {"data": None, "prediction": PREDICTION_COLUMNS, "performance": ()}[kind]
        if columns is None:
            columns = [c for c in result.statistics if c not in PREDICTION_COLUMNS]
        window = result.window
        return DriftEvent(
            id=event_id or str(uuid.uuid4()),
            kind=kind,
            status=status,  # type: ignore[arg-type]
            severity=state.severity,
            model=result.model,
            version=result.version,
            dedup_key=dedup_key(result.model, kind),
            window=WindowInfo(start=window.start, end=window.end, size=window.size, labelled=window.labelled),
            # JSON has no NaN: a statistic that is not a number (e.g. a test on an empty column) is left out.
            metrics={name: value for name, value in outcome.metrics.items() if math.isfinite(value)},
            drifted_columns=list(outcome.drifted_columns),
            # The calibrated statistics the decision compared (Evidently's per-column tests are in the HTML report).
            scores={
                name: ColumnScore(method=s.method, score=s.statistic, threshold=s.threshold, drifted=s.drifted)
                for name in columns
                if (s := result.statistics.get(name)) is not None
                and math.isfinite(s.statistic)
                and math.isfinite(s.threshold)
            },
            started_at=state.started_at or now,
            detected_at=now,
            onset_at=state.onset_at if status == "firing" else None,
            report_path=report_path,
            firing_event_id=state.event_id if status == "resolved" else None,
        )


def _short(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to about ``limit`` characters (a hostile label can be long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def result_summary(result: DriftResult, report_path: Path | None = None) -> dict:
    """A JSON-ready summary of a check (what ``driftloop drift report --json`` prints)."""
    return {
        "model": result.model,
        "version": result.version,
        "window": {
            "start": result.window.start.isoformat() if result.window.start else None,
            "end": result.window.end.isoformat() if result.window.end else None,
            "size": result.window.size,
            "labelled": result.window.labelled,
        },
        "reference_size": result.reference_size,
        "kinds": {
            kind: {
                "detected": k.detected,
                "severity": k.severity,
                "metrics": k.metrics,
                "drifted_columns": list(k.drifted_columns),
            }
            for kind, k in result.kinds.items()
        },
        "comparable": result.comparable,
        # The calibrated statistics the decision compared; Evidently's per-column tests (the HTML report's) apart.
        "columns": {
            name: {"method": s.method, "score": s.statistic, "threshold": s.threshold, "drifted": s.drifted}
            for name, s in result.statistics.items()
        },
        "evidently_columns": {
            name: {"method": d.method, "score": d.score, "threshold": d.threshold, "drifted": d.drifted}
            for name, d in result.columns.items()
        },
        "skipped_columns": result.skipped_columns,
        "duration_s": round(result.duration_s, 4),
        "report_path": str(report_path) if report_path else None,
    }
