"""Evidently HTML reports of a check: the tests the decision used, atomic writes, retention."""

from __future__ import annotations

import os
import time

import pytest

from monitoring import DriftPolicy, ReportError, check_drift, prune_reports, save_report
from monitoring.report import build_report
from monitoring.window import SlidingWindow

pytestmark = pytest.mark.unit


@pytest.fixture
def checked(synthetic_factory):
    setup = synthetic_factory()
    reference = setup.reference()
    window = SlidingWindow(400)
    for prediction, label in setup.predictions(400, seed=3, drift_at=200):
        window.add(prediction, true_label=label)
    frame = window.frame(reference.feature_names)
    policy = DriftPolicy(min_window=300, window_size=400, calibration_resamples=500)
    return check_drift(frame, reference, policy, window.bounds()), frame, reference


def test_the_report_runs_evidentlys_preset_with_the_checks_methods_and_thresholds(checked):
    result, frame, reference = checked
    report = build_report(result, frame, reference, drift_share=0.5)
    preset = report.metrics[0]
    assert type(preset).__name__ == "DataDriftPreset"
    assert preset.per_column_method == {c: d.method for c, d in result.columns.items()}
    assert preset.per_column_threshold == {c: d.threshold for c, d in result.columns.items()}
    assert report.metadata["model"] == "classifier" and report.metadata["data_drift"] == "True"


def test_save_report_writes_html_named_by_model_version_and_time(checked, tmp_path):
    result, frame, reference = checked
    path = save_report(result, frame, reference, tmp_path / "reports", keep=5)
    assert path.parent == tmp_path / "reports" and path.name.startswith("drift-classifier-v1-")
    html = path.read_text()
    assert "<html" in html.lower() and "oov_share" in html and "max_score" in html
    assert list(path.parent.iterdir()) == [path]  # no partial file left


def test_retention_keeps_the_newest_reports_and_leaves_other_files(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    now = time.time()
    for i in range(5):
        report = folder / f"drift-m-v1-{i}.html"
        report.write_text("x")
        os.utime(report, (now - 100 + i, now - 100 + i))
    (folder / "notes.html").write_text("mine")
    removed = prune_reports(folder, keep=2)
    assert sorted(p.name for p in removed) == ["drift-m-v1-0.html", "drift-m-v1-1.html", "drift-m-v1-2.html"]
    assert sorted(p.name for p in folder.iterdir()) == ["drift-m-v1-3.html", "drift-m-v1-4.html", "notes.html"]


def test_an_unwritable_folder_is_a_report_error(checked, tmp_path):
    result, frame, reference = checked
    blocker = tmp_path / "reports"
    blocker.write_text("a file, not a folder")
    with pytest.raises(ReportError, match="cannot save the drift report"):
        save_report(result, frame, reference, blocker, keep=5)
