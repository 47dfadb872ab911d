"""The drift topic's contract (``drift-v1``, JSON, key: the model name): one record when an alert fires or resolves."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from monitoring.drift import Kind, Severity

Status = Literal["firing", "resolved"]


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowInfo(_Contract):
    """The compared window: event-time bounds, number of predictions, how many of them have a label."""

    start: datetime | None
    end: datetime | None
    size: int
    labelled: int


class ColumnScore(_Contract):
    """Evidently's test of one column: method, score (p-value or distance), threshold, verdict."""

    method: str
    score: float
    threshold: float
    drifted: bool


class DriftEvent(_Contract):
    """A drift alert of one model and kind opening (``firing``) or closing (``resolved``).

    Example::

        {"schema_version": 1, "id": "6f1c…", "kind": "data", "status": "firing", "severity": "critical",
         "model": "classifier", "version": 3, "dedup_key": "driftloop/classifier/data",
         "window": {"start": "2026-11-27T10:00:00Z", "end": "2026-11-27T10:05:00Z", "size": 5000, "labelled": 812},
         "metrics": {"drift_share": 0.8, "drifted_count": 4, "column_count": 5},
         "drifted_columns": ["amount", "items", "text_length", "oov_share"],
         "scores": {"amount": {"method": "ks", "score": 0.0, "threshold": 0.05, "drifted": true}, …},
         "started_at": "2026-11-27T10:05:01Z", "detected_at": "2026-11-27T10:05:01Z",
         "report_path": ".stack/reports/drift-classifier-v3-20261127T100501Z-6f1c.html"}
    """

    schema_version: Literal[1] = 1
    id: str = Field(min_length=1)
    kind: Kind
    status: Status
    severity: Severity
    model: str
    version: int
    dedup_key: str
    window: WindowInfo
    metrics: dict[str, float]
    drifted_columns: list[str]
    scores: dict[str, ColumnScore] = Field(default_factory=dict)
    started_at: datetime
    detected_at: datetime
    report_path: str | None = None
    firing_event_id: str | None = None  # on a resolved event: the event that opened the alert

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> DriftEvent:
        return cls.model_validate_json(raw)


def dedup_key(model: str, kind: Kind) -> str:
    """The alert identity shared by every receiver: one open alert per model and drift kind."""
    return f"driftloop/{model}/{kind}"
