"""The demo's report: the summary (timeline and figures of one run) and the accuracy plot, built from what the
observer read on the topics and from the retraining consumer's run log (``<model>/.runs.jsonl``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from driftloop.demo.observer import Observed
from streams.schemas import ModelState


def run_outcome(runs: Iterable[dict], version: int | None) -> dict:
    """The retraining run that built ``version`` (a record of the run log, as ``ModelRepository.runs`` folds them);
    empty when there is none."""
    if version is None:
        return {}
    return next((run for run in runs if run.get("version") == version), {})


def summarise(
    seen: Observed,
    produced: dict[str, datetime],
    marks: dict[str, datetime],
    initial: int | None,
    healed_by: int | None,
    runs: Iterable[dict],
) -> dict:
    """Timeline and figures of one run: ``healed_by`` is the first version promoted that learned from drifted data;
    ``runs`` the retraining consumer's run records (where its start, end and canary verdict come from)."""
    onset = marks.get("drift_onset")
    firing = sorted((d for d in seen.drift if d.get("status") == "firing"), key=lambda d: d["detected_at"])
    after_onset = [d for d in firing if onset and datetime.fromisoformat(d["detected_at"]) >= onset]
    alert = datetime.fromisoformat(after_onset[0]["detected_at"]) if after_onset else None
    published = next((s for s in seen.states if s.event == "published" and s.candidate == healed_by), None)
    promoted = next((s for s in seen.states if s.event == "promoted" and s.champion == healed_by), None)
    new_version = healed_by
    first_new = min(
        (p.predicted_at for p in seen.predictions.values() if new_version and p.model.version == new_version),
        default=None,
    )
    outcome = run_outcome(runs, healed_by)

    def accuracy(start: datetime | None, end: datetime | None) -> float | None:
        rows = [
            p.label == seen.labels[p.event_id]
            for p in seen.predictions.values()
            if p.event_id in seen.labels
            and (start is None or p.event_time >= start)
            and (end is None or p.event_time < end)
        ]
        return round(sum(rows) / len(rows), 4) if rows else None

    def since_onset(when: datetime | None) -> float | None:
        return round((when - onset).total_seconds(), 1) if when and onset else None

    promotion_time = promoted.at if promoted else None
    timeline = {
        "drift_onset": onset,
        "drift_alert": alert,
        "retraining_start": outcome.get("started_at"),
        "candidate_published": published.at if published else None,
        "candidate_serving": first_new,
        "promotion": promotion_time,
        "retraining_end": outcome.get("ended_at"),
    }
    lost = sorted(set(produced) - set(seen.predictions))
    return {
        "timeline": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in timeline.items()},
        "initial_champion": initial,
        "new_version": new_version,
        "time_to_detect_s": since_onset(alert),
        "time_to_serve_new_version_s": since_onset(first_new),
        "time_to_promote_s": since_onset(promotion_time),
        "accuracy_before_drift": accuracy(None, onset),
        "accuracy_after_drift": accuracy(onset, promotion_time),
        "accuracy_after_promotion": accuracy(promotion_time, None) if promotion_time else None,
        "events_produced": len(produced),
        "predictions": len(seen.predictions),
        "failed_predictions": seen.dead_letters,
        "drift_alerts": [f"{d['detected_at'][11:19]} {d['kind']} {d['severity']}" for d in firing],
        "events_lost": len(lost),
        "canary": outcome.get("verdict"),
    }


def progress_line(
    elapsed: float, produced: int, seen: Observed, state: ModelState | None, label_delay_s: float = 0.0
) -> str:
    """One line of progress; the accuracy is over the last 15 s of events whose labels are due by now."""
    until = datetime.now(UTC) - timedelta(seconds=label_delay_s)
    with seen.lock:
        recent = [p for p in seen.predictions.values() if timedelta(0) <= until - p.event_time < timedelta(seconds=15)]
        scored = [p.label == seen.labels[p.event_id] for p in recent if p.event_id in seen.labels]
        alerts = sum(1 for d in seen.drift if d.get("status") == "firing")
        answered = len(seen.predictions)
    accuracy = f"{sum(scored) / len(scored):6.1%}" if scored else "   n/a"
    champion = f"v{state.champion}" if state and state.champion else "-"
    candidate = f" candidate v{state.candidate}" if state and state.candidate else ""
    return (
        f"[{elapsed:6.1f}s] events {produced:5d}  predictions {answered:5d}  accuracy(15s) {accuracy}  "
        f"champion {champion}{candidate}  drift alerts {alerts}"
    )


def write_outputs(summary: dict, seen: Observed, produced: dict[str, datetime], out_dir: Path) -> None:
    """``summary.json`` and ``accuracy.png`` (accuracy over time in 5 s bins, with the loop's moments marked)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(produced.values()) if produced else datetime.now(UTC)
    bins: dict[int, list[bool]] = {}
    for p in seen.predictions.values():
        if p.event_id in seen.labels:
            bins.setdefault(int((p.event_time - start).total_seconds() // 5), []).append(
                p.label == seen.labels[p.event_id]
            )
    xs = sorted(bins)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    # Each point at the middle of its bin: a bin that straddles a moment shows on both sides of its marker.
    accuracy = [sum(bins[x]) / len(bins[x]) for x in xs]
    ax.plot([x * 5 + 2.5 for x in xs], accuracy, marker=".", label="accuracy (5 s bins)")
    colours = {"drift_onset": "red", "drift_alert": "orange", "candidate_serving": "purple", "promotion": "green"}
    for name, colour in colours.items():
        when = summary["timeline"].get(name)
        if when:
            x = (datetime.fromisoformat(when) - start).total_seconds()
            ax.axvline(x, color=colour, linestyle="--", label=f"{name.replace('_', ' ')} ({x:.0f}s)")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("accuracy on labelled events")
    ax.set_ylim(0, 1.05)
    ax.set_title("driftloop closed loop: accuracy over time")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=110)
    plt.close(fig)


def timeline_lines(summary: dict) -> list[str]:
    """The timeline as text, in order, with seconds since the drift onset."""
    onset = summary["timeline"].get("drift_onset")
    rows = sorted(((k, v) for k, v in summary["timeline"].items() if v), key=lambda kv: kv[1])
    lines = []
    for name, when in rows:
        offset = (datetime.fromisoformat(when) - datetime.fromisoformat(onset)).total_seconds() if onset else 0.0
        lines.append(f"  {when[11:23]}  {offset:+7.1f}s  {name.replace('_', ' ')}")
    return lines
