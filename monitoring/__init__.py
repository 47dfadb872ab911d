"""Drift monitoring: sliding windows of predictions, Evidently drift checks against the serving version's reference,
a decision policy with hysteresis, drift events on the drift topic, on-call alerts, metrics and HTML reports.

The names below load on first use (PEP 562), so that importing one module (the CLI's) does not import Evidently and
pandas (several seconds). The text descriptors both sides of a check use live in ``streams.text_stats``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundation.lazy import lazy_exports

if TYPE_CHECKING:
    from monitoring.alerts import (
        AlertDispatcher,
        AlertmanagerReceiver,
        PagerDutyReceiver,
        Receiver,
        RetryPolicy,
        SlackReceiver,
        build_dispatcher,
        build_receivers,
    )
    from monitoring.drift import ColumnDrift, DriftPolicy, DriftResult, KindResult, check_drift
    from monitoring.exceptions import (
        DeliveryFailed,
        DriftCheckError,
        MonitoringError,
        ReferenceSampleError,
        ReportError,
        UnusableRecord,
    )
    from monitoring.metrics import MonitorMetrics
    from monitoring.monitor import CheckOutcome, Monitor, result_summary
    from monitoring.ondemand import check_now
    from monitoring.policy import DriftState
    from monitoring.reference import ReferenceSample, load_reference, reference_path, reference_row
    from monitoring.report import prune_reports, save_report
    from monitoring.worker import MonitorWorker, run_monitor
    from streams.schemas import DriftEvent, dedup_key

_EXPORTS = {
    "AlertDispatcher": "monitoring.alerts",
    "AlertmanagerReceiver": "monitoring.alerts",
    "CheckOutcome": "monitoring.monitor",
    "ColumnDrift": "monitoring.drift",
    "DeliveryFailed": "monitoring.exceptions",
    "DriftCheckError": "monitoring.exceptions",
    "DriftEvent": "streams.schemas",
    "DriftPolicy": "monitoring.drift",
    "DriftResult": "monitoring.drift",
    "DriftState": "monitoring.policy",
    "KindResult": "monitoring.drift",
    "Monitor": "monitoring.monitor",
    "MonitorMetrics": "monitoring.metrics",
    "MonitorWorker": "monitoring.worker",
    "MonitoringError": "monitoring.exceptions",
    "PagerDutyReceiver": "monitoring.alerts",
    "Receiver": "monitoring.alerts",
    "ReferenceSample": "monitoring.reference",
    "ReferenceSampleError": "monitoring.exceptions",
    "ReportError": "monitoring.exceptions",
    "RetryPolicy": "monitoring.alerts",
    "SlackReceiver": "monitoring.alerts",
    "UnusableRecord": "monitoring.exceptions",
    "build_dispatcher": "monitoring.alerts",
    "build_receivers": "monitoring.alerts",
    "check_drift": "monitoring.drift",
    "check_now": "monitoring.ondemand",
    "dedup_key": "streams.schemas",
    "load_reference": "monitoring.reference",
    "prune_reports": "monitoring.report",
    "reference_path": "monitoring.reference",
    "reference_row": "monitoring.reference",
    "result_summary": "monitoring.monitor",
    "run_monitor": "monitoring.worker",
    "save_report": "monitoring.report",
}

__all__ = [
    "AlertDispatcher",
    "AlertmanagerReceiver",
    "CheckOutcome",
    "ColumnDrift",
    "DeliveryFailed",
    "DriftCheckError",
    "DriftEvent",
    "DriftPolicy",
    "DriftResult",
    "DriftState",
    "KindResult",
    "Monitor",
    "MonitorMetrics",
    "MonitorWorker",
    "MonitoringError",
    "PagerDutyReceiver",
    "Receiver",
    "ReferenceSample",
    "ReferenceSampleError",
    "ReportError",
    "RetryPolicy",
    "SlackReceiver",
    "UnusableRecord",
    "build_dispatcher",
    "build_receivers",
    "check_drift",
    "check_now",
    "dedup_key",
    "load_reference",
    "prune_reports",
    "reference_path",
    "reference_row",
    "result_summary",
    "run_monitor",
    "save_report",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
