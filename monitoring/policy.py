"""Hysteresis: a drift kind fires after it persists for k checks and resolves after it stays away for m checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from monitoring.drift import Severity

Step = Literal["fired", "resolved", "firing", "quiet"]


@dataclass
class DriftState:
    """The alert state of one model and drift kind.

    Attributes:
        firing: whether an alert is open.
        drift_streak: consecutive checks that detected drift.
        clean_streak: consecutive checks that did not.
        started_at: when the open alert fired.
        severity: the open alert's severity, fixed when it fired (it is part of the alert's identity).
        event_id: the id of the drift event that opened the alert.
        onset_at: the open alert's estimate of when the drift began (``monitoring.changepoint``), when it has one.
    """

    firing: bool = False
    drift_streak: int = 0
    clean_streak: int = 0
    started_at: datetime | None = None
    severity: Severity = "warning"
    event_id: str | None = None
    onset_at: datetime | None = None

    def update(self, detected: bool | None, hysteresis_checks: int, resolve_checks: int) -> Step:
        """Fold one check's verdict in.

        Args:
            detected: the check's verdict; None (undecided, e.g. too few labels) changes nothing.
            hysteresis_checks: consecutive detections needed to fire.
            resolve_checks: consecutive clean checks needed to resolve.

        Returns:
            ``"fired"`` or ``"resolved"`` on a transition, else ``"firing"`` or ``"quiet"``.
        """
        if detected is not None:
            if detected:
                self.drift_streak += 1
                self.clean_streak = 0
            else:
                self.clean_streak += 1
                self.drift_streak = 0
            if not self.firing and self.drift_streak >= hysteresis_checks:
                self.firing = True
                return "fired"
            if self.firing and self.clean_streak >= resolve_checks:
                self.firing = False
                return "resolved"
        return "firing" if self.firing else "quiet"

    def reset_streaks(self) -> None:
        """Forget the streaks (the reference changed); an open alert stays open until checks clear it."""
        self.drift_streak = 0
        self.clean_streak = 0
