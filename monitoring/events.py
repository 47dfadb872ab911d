"""The drift topic's contract (``drift-v1``); it lives with every other topic contract in ``streams.schemas``."""

from __future__ import annotations

from streams.schemas import ColumnScore, DriftEvent, Status, WindowInfo, dedup_key

__all__ = ["ColumnScore", "DriftEvent", "Status", "WindowInfo", "dedup_key"]
