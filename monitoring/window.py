"""A sliding window of a model's recent predictions, joined with their labels as they arrive."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from monitoring.reference import DESCRIPTOR_COLUMNS
from streams.schemas import Prediction
from streams.text_stats import TEXT_STATS_COLUMNS

#: The column of the ground-truth label in a window frame (NaN until the label arrives).
TRUE_LABEL = "true_label"
#: The column of the event's entity in a window frame (the comparability check counts distinct entities).
ENTITY_ID = "entity_id"


@dataclass(slots=True)
class WindowRow:
    event_id: str
    entity_id: str
    event_time: datetime
    version: int
    features: dict[str, float | None]
    descriptors: tuple[float, ...]  # in DESCRIPTOR_COLUMNS order, NaN when absent
    label: str
    max_score: float
    true_label: str | None = None


@dataclass(frozen=True)
class WindowBounds:
    start: datetime | None
    end: datetime | None
    size: int
    labelled: int


class SlidingWindow:
    """The last ``max_size`` predictions (deduplicated by ``event_id``), optionally no older than ``max_age_s``.

    Args:
        max_size: how many predictions the window keeps.
        max_age_s: drop predictions whose event time is this much older than the newest one; None keeps all.
    """

    def __init__(self, max_size: int, max_age_s: float | None = None) -> None:
        self.max_size = max_size
        self.max_age = timedelta(seconds=max_age_s) if max_age_s else None
        self._rows: deque[WindowRow] = deque()
        self._by_id: dict[str, WindowRow] = {}
        self._labelled = 0
        self._newest: datetime | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._by_id

    @property
    def labelled(self) -> int:
        return self._labelled

    def add(self, prediction: Prediction, true_label: str | None = None) -> bool:
        """Append a prediction; False when its ``event_id`` is already in the window (a redelivery)."""
        if prediction.event_id in self._by_id:
            return False
        stats = prediction.text_stats or {}
        row = WindowRow(
            event_id=prediction.event_id,
            entity_id=prediction.entity_id,
            event_time=prediction.event_time,
            version=prediction.model.version,
            features=prediction.features,
            descriptors=tuple(float(stats.get(k, np.nan)) for k in TEXT_STATS_COLUMNS),
            label=prediction.label,
            max_score=max(prediction.scores.values()) if prediction.scores else np.nan,
            true_label=true_label,
        )
        self._rows.append(row)
        self._by_id[row.event_id] = row
        self._labelled += true_label is not None
        if self._newest is None or row.event_time > self._newest:
            self._newest = row.event_time
        self._trim()
        return True

    def add_label(self, event_id: str, label: str) -> bool:
        """Attach the ground truth to the prediction of ``event_id``; False when it is not in the window."""
        row = self._by_id.get(event_id)
        if row is None:
            return False
        self._labelled += row.true_label is None
        row.true_label = label
        return True

    def clear(self) -> None:
        self._rows.clear()
        self._by_id.clear()
        self._labelled = 0
        self._newest = None

    def event_times(self) -> list[datetime]:
        """The event times of the window's predictions, in the order they were added (the frame's row order)."""
        return [r.event_time for r in self._rows]

    def bounds(self) -> WindowBounds:
        if not self._rows:
            return WindowBounds(None, None, 0, 0)
        times = [r.event_time for r in self._rows]
        return WindowBounds(min(times), max(times), len(self._rows), self._labelled)

    def frame(self, feature_names: tuple[str, ...] | list[str]) -> pd.DataFrame:
        """The window as columns: ``feature_names``, the descriptors, ``label``, ``max_score``, ``true_label``,
        ``entity_id``."""
        rows = self._rows
        data: dict[str, object] = {}
        for name in feature_names:
            data[name] = np.fromiter(
                (np.nan if (v := r.features.get(name)) is None else v for r in rows), dtype="float64", count=len(rows)
            )
        descriptors = np.array([r.descriptors for r in rows], dtype="float64")
        descriptors = descriptors.reshape(len(rows), len(DESCRIPTOR_COLUMNS))
        for i, name in enumerate(DESCRIPTOR_COLUMNS):
            data[name] = descriptors[:, i]
        data["label"] = pd.array([r.label for r in rows], dtype="object")
        data["max_score"] = np.fromiter((r.max_score for r in rows), dtype="float64", count=len(rows))
        data[TRUE_LABEL] = pd.array([r.true_label for r in rows], dtype="object")
        data[ENTITY_ID] = pd.array([r.entity_id for r in rows], dtype="object")
        return pd.DataFrame(data)

    def _trim(self) -> None:
        while len(self._rows) > self.max_size:
            self._evict()
        if self.max_age is not None and self._newest is not None:
            oldest_allowed = self._newest - self.max_age
            while self._rows and self._rows[0].event_time < oldest_allowed:
                self._evict()

    def _evict(self) -> None:
        row = self._rows.popleft()
        del self._by_id[row.event_id]
        self._labelled -= row.true_label is not None


class PendingLabels:
    """Labels that arrived before their prediction, kept (at most ``max_size``, oldest dropped) until it does."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._labels: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._labels)

    def put(self, event_id: str, label: str) -> None:
        if self.max_size <= 0:
            return
        self._labels[event_id] = label
        self._labels.move_to_end(event_id)
        while len(self._labels) > self.max_size:
            self._labels.popitem(last=False)

    def pop(self, event_id: str) -> str | None:
        return self._labels.pop(event_id, None)
