"""Benchmark: one drift check of a 10,000-prediction window (budget: 0.5 s). Prints one JSON line.

A check is what the monitor does every N events or T seconds: the window as columns, Evidently's tests of every
feature, text descriptor and prediction column, the performance figures, the hysteresis and the metrics
(``Monitor.check`` without an HTML report; reports are written only when an alert opens or closes, and their cost is
reported beside, as ``html_report_s``).

Cases: a stable window, and one whose features and text shift half-way. The reference has 1,000 rows by default, so
Evidently picks its KS test for numeric columns (the slower path; above 1,000 rows it picks Wasserstein).

    python bench/drift_check.py [--window 10000] [--reference 1000] [--repeats 15] [--plot drift_check.png]

``--plot`` also times windows of 1k-20k and draws time against window size (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from foundation.settings import load_settings
from monitoring import Monitor
from monitoring.report import save_report
from monitoring.synthetic import WordModel, version_metadata, write_version_metadata
from streams.schemas import Label
from streams.synthetic import SyntheticStream

BUDGET_S = 0.5


def _monitor(repository: Path, window: int, reports: Path) -> Monitor:
    settings = load_settings(
        triton={"model_repository": repository},
        monitoring={
            "window_size": window,
            "min_window": min(window, 500),
            "hysteresis_checks": 3,
            "reports_dir": reports,
            "metrics_port": 0,
        },
    )
    return Monitor(settings)


def _fill(monitor: Monitor, model: WordModel, n: int, drift_at: int | None, seed: int) -> None:
    labelled_at = datetime.now(UTC)
    for i, example in enumerate(SyntheticStream(seed=seed).stream(n, drift_at=drift_at)):
        monitor.observe_prediction(model.predict(example.event))
        if i % 2 == 0:  # half the predictions have their ground truth by the time of the check
            monitor.observe_label(Label(event_id=example.event.event_id, label=example.label, labelled_at=labelled_at))


def _time_checks(monitor: Monitor, model_name: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        outcome = monitor.check(model_name, force=True, save_html=False)
        times.append(time.perf_counter() - started)
        assert outcome is not None
    return times


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run(window: int, reference_size: int, repeats: int, plot: Path | None) -> dict:
    logging.disable(logging.WARNING)
    model = WordModel().fit(SyntheticStream(seed=1).stream(2000))
    reference = [model.predict(e.event) for e in SyntheticStream(seed=2).stream(reference_size)]
    with tempfile.TemporaryDirectory() as tmp:
        repository, reports = Path(tmp) / "repo", Path(tmp) / "reports"
        write_version_metadata(repository, version_metadata(model, reference))
        cases = {}
        html_s = None
        for case, drift_at in (("stable", None), ("drifted", window // 2)):
            monitor = _monitor(repository, window, reports)
            _fill(monitor, model, window, drift_at, seed=3)
            times = _time_checks(monitor, model.name, repeats)
            result = monitor.tracks[model.name].last_result
            cases[case] = {
                "median_s": round(statistics.median(times), 4),
                "p95_s": round(_p95(times), 4),
                "max_s": round(max(times), 4),
                "stats_s": round(result.duration_s, 4),
                "data_drift": result.kinds["data"].detected,
                "methods": sorted({c.method for c in result.columns.values()}),
            }
            if case == "drifted":
                track = monitor.tracks[model.name]
                frame = track.window.frame(track.reference.feature_names)
                started = time.perf_counter()
                save_report(result, frame, track.reference, reports, keep=1)
                html_s = round(time.perf_counter() - started, 3)

        curve = _curve(repository, reports, model, repeats=3) if plot else None
    worst_p95 = max(c["p95_s"] for c in cases.values())
    line = {
        "bench": "drift_check",
        "window": window,
        "reference": reference_size,
        "repeats": repeats,
        "p95_s": worst_p95,
        "median_s": max(c["median_s"] for c in cases.values()),
        "budget_s": BUDGET_S,
        "within_budget": worst_p95 <= BUDGET_S,
        "cases": cases,
        "html_report_s": html_s,
        "evidently": version("evidently"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if plot and curve:
        _plot(curve, plot, reference_size)
        line["plot"] = str(plot)
    return line


def _curve(repository: Path, reports: Path, model: WordModel, repeats: int) -> list[tuple[int, float, float]]:
    points = []
    for size in (1000, 2000, 5000, 10_000, 20_000):
        medians = []
        for drift_at in (None, size // 2):
            monitor = _monitor(repository, size, reports)
            _fill(monitor, model, size, drift_at, seed=4)
            medians.append(statistics.median(_time_checks(monitor, model.name, repeats)))
        points.append((size, *medians))
    return points


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib")
    return plt


def _plot(points: list[tuple[int, float, float]], path: Path, reference_size: int) -> None:
    plt = _pyplot()
    sizes = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [p[1] for p in points], marker="o", label="stable window")
    ax.plot(sizes, [p[2] for p in points], marker="o", label="drift half-way")
    ax.axhline(BUDGET_S, color="red", linestyle="--", label=f"budget {BUDGET_S} s")
    ax.set_xlabel("window size (predictions)")
    ax.set_ylabel("drift check, median (s)")
    ax.set_title(f"driftloop drift check vs a {reference_size}-row reference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--reference", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of check time against window size")
    args = parser.parse_args()
    if args.plot:
        _pyplot()  # fail before the benchmark runs
    print(json.dumps(run(args.window, args.reference, args.repeats, args.plot)))


if __name__ == "__main__":
    main()
