"""Run the chaos scenarios (``pytest -m chaos``) and summarise their accounting in one JSON line.

Each scenario reports, through the ``chaos_ledger`` fixture (tests/chaos/conftest.py), the records it produced
and how many became predictions, dead letters, nothing (lost) or more than one output (duplicates). This script
runs pytest in a child process with ``DRIFTLOOP_CHAOS_LEDGER`` pointing at a temporary file, reads the entries the
scenarios wrote, adds pytest's outcome per test (from a JUnit XML report), and prints one JSON line::

    {"ok": true, "pytest_exit": 0, "tests": {"passed": 3, ...},
     "totals": {"produced": ..., "lost": 0, ..., "restarts": 0, "restarts_by_worker": {"inference": 0, ...}},
     "scenarios": [{"scenario": "live-fuzz", "produced": ..., "lost": 0, "duplicates": 0,
                    "restarts": {"inference": 0, "features": 0, "monitor": 0, "retrain": 0, "supervisor": 0},
                    "outcome": "passed", "details": {...}}, ...]}

``restarts`` (per scenario, per worker; summed in ``totals``) sits next to lost and duplicated: the scenarios that
kill a worker on purpose report the restarts they caused; the others (hostile input, live fuzz) must report 0, and
assert it themselves.

``ok`` is true when pytest passed, the scenarios reported, and none lost a record. Duplicates are reported, not
failed: delivery is at least once, and a SIGKILLed worker or a broker restart legitimately redelivers records whose
outputs were produced but whose offsets were not committed (consumers dedupe by ``event_id``). A scenario that must
not duplicate (e.g. hostile input, with no restart) asserts it itself.

    python bench/chaos_summary.py [--out chaos.json] [-- extra pytest arguments, e.g. tests/chaos -k hostile]

Exit status: 0 when ``ok``, else 1. The servers are the tests' own (private broker, tritonserver, Feast store), so
the command needs what ``make test`` needs and nothing running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LEDGER_ENV = "DRIFTLOOP_CHAOS_LEDGER"  # read by tests/chaos/conftest.py
COUNTS = ("produced", "predicted", "dead_lettered", "lost", "duplicates")


def run(pytest_args: list[str], workdir: Path) -> dict:
    """Run ``pytest -m chaos`` and return the summary."""
    ledger, junit = workdir / "ledger.jsonl", workdir / "junit.xml"
    ledger.touch()
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "chaos",
        "-p",
        "no:cacheprovider",
        "-q",
        f"--junitxml={junit}",
        *pytest_args,
    ]
    started = time.monotonic()
    env = {**os.environ, LEDGER_ENV: str(ledger)}
    # pytest reports on stderr: stdout carries the one summary line.
    done = subprocess.run(argv, cwd=REPO, env=env, stdout=sys.stderr, check=False)  # noqa: S603
    duration = time.monotonic() - started
    scenarios = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    for entry in scenarios:
        entry["restarts"] = restarts_of(entry.get("details") or {})
    tests = _outcomes(junit)
    totals = {name: sum(int(entry.get(name, 0)) for entry in scenarios) for name in COUNTS}
    by_worker: dict[str, int] = {}
    for entry in scenarios:
        for worker, count in entry["restarts"].items():
            by_worker[worker] = by_worker.get(worker, 0) + count
    totals["restarts"] = sum(by_worker.values())
    totals["restarts_by_worker"] = by_worker
    ok = done.returncode == 0 and bool(scenarios) and totals["lost"] == 0
    return {
        "ok": ok,
        "pytest_exit": done.returncode,
        "duration_s": round(duration, 1),
        "tests": tests,
        "totals": totals,
        "scenarios": scenarios,
    }


def restarts_of(details: dict) -> dict[str, int]:
    """Worker restarts of one scenario, per worker, from its ledger details.

    ``restarts`` may be a mapping (worker -> restarts, e.g. ``{"inference": 0, "monitor": 0}``) or a number; a
    number, ``worker_restarts`` or ``worker_exits`` count under ``"workers"``. ``worker_restarts`` wins over a numeric
    ``restarts`` (where a scenario names by ``restarts`` the fault it injects, e.g. a broker restart)."""
    restarts = details.get("restarts")
    if isinstance(restarts, dict):
        return {str(worker): int(count) for worker, count in restarts.items()}
    for name in ("worker_restarts", "worker_exits", "restarts"):
        value = details.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"workers": int(value)}
    return {}


_TAGS = (("failure", "failed"), ("error", "errors"), ("skipped", "skipped"))


def _outcomes(junit: Path) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if not junit.exists():
        return counts
    for case in ET.parse(junit).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        outcome = next((name for tag, name in _TAGS if tag in tags), "passed")
        counts[outcome] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Also write the summary line to this file.")
    parser.add_argument("pytest_args", nargs="*", help="Extra pytest arguments (after --).")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chaos-") as workdir:
        summary = run(args.pytest_args, Path(workdir))
    line = json.dumps(summary, default=str)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
