"""Errors of the monitoring stage.

MonitoringError
├── ReferenceSampleError (a model version's reference sample is missing or malformed)
├── DriftCheckError      (a drift check could not run: no usable column, empty window)
├── ReportError          (an Evidently HTML report could not be built or saved)
├── UnusableRecord       (a record that keeps its topic's contract but cannot be used: an unknown label or model)
└── DeliveryFailed       (an alert receiver did not accept a notification after its retries)
"""

from __future__ import annotations


class MonitoringError(Exception):
    """Root of the monitoring stage's errors."""


class ReferenceSampleError(MonitoringError):
    """The reference sample of a model version is missing or does not have the expected shape."""


class DriftCheckError(MonitoringError):
    """A drift check could not be computed (no column both sides can compare, empty window)."""


class ReportError(MonitoringError):
    """An Evidently HTML report could not be built or written."""


class UnusableRecord(MonitoringError):
    """A record that keeps its topic's contract but that the monitor cannot use; ``reason`` says why, in one line.

    The worker dead-letters such a prediction and skips (counts) such a label or model state; it never retries it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeliveryFailed(MonitoringError):
    """A receiver did not accept a notification after every retry. The message never holds a secret."""

    def __init__(self, receiver: str, reason: str, attempts: int) -> None:
        super().__init__(f"{receiver}: {reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.receiver = receiver
        self.reason = reason
        self.attempts = attempts
