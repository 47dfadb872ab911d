"""Fault-injection scenarios (marker ``chaos``) and their accounting.

Every scenario reports what it produced and what became of it through the ``chaos_ledger`` fixture::

    def test_broker_restart(chaos_ledger, ...):
        ...
        chaos_ledger.record("broker-restart", produced=5000, predicted=4990, dead_lettered=10, lost=0, duplicates=3,
                            restarts=1)  # any extra keyword is kept as a detail of the scenario

Record before asserting, so that a failing scenario still reports its counts. When ``DRIFTLOOP_CHAOS_LEDGER`` names
a file (``bench/chaos_summary.py`` sets it), each entry is appended to it as one JSON line at the end of the test,
with the test's id and outcome; ``bench/chaos_summary.py`` turns the file into one summary line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftloop.stack import kafka as local_kafka
from tests.helpers import free_port

LEDGER_ENV = "DRIFTLOOP_CHAOS_LEDGER"
COUNTS = ("produced", "predicted", "dead_lettered", "lost", "duplicates")


class ChaosLedger:
    """The accounting of one test's scenarios (a test may run several)."""

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id
        self.entries: list[dict[str, Any]] = []
        self._started = time.monotonic()

    def record(
        self,
        scenario: str,
        *,
        produced: int,
        predicted: int,
        dead_lettered: int,
        lost: int,
        duplicates: int,
        **details: Any,
    ) -> dict[str, Any]:
        """Account for one scenario: records produced, and how many became predictions, dead letters, nothing
        (``lost``) or more than one output (``duplicates``). Extra keywords are kept under ``details``."""
        counts = {
            "produced": produced,
            "predicted": predicted,
            "dead_lettered": dead_lettered,
            "lost": lost,
            "duplicates": duplicates,
        }
        bad = {name: value for name, value in counts.items() if not isinstance(value, int) or value < 0}
        if bad:
            raise ValueError(f"chaos ledger counts must be non-negative integers, got {bad}")
        entry = {"scenario": scenario, "test": self.test_id, **counts, "details": details}
        self.entries.append(entry)
        return entry

    def finish(self, outcome: str) -> list[dict[str, Any]]:
        duration = round(time.monotonic() - self._started, 3)
        for entry in self.entries:
            entry.update(outcome=outcome, duration_s=duration)
        return self.entries


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call" or report.failed:
        item.stash[_OUTCOME] = report.outcome if report.when == "call" else "error"
    return report


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def chaos_ledger(request: pytest.FixtureRequest) -> Iterator[ChaosLedger]:
    """Where a chaos scenario reports its counts (see the module docstring)."""
    ledger = ChaosLedger(request.node.nodeid)
    yield ledger
    entries = ledger.finish(request.node.stash.get(_OUTCOME, "unknown"))
    target = os.environ.get(LEDGER_ENV)
    if target and entries:
        with Path(target).open("a") as out:
            for entry in entries:
                out.write(json.dumps(entry, default=str) + "\n")


@pytest.fixture
def private_broker(stack_settings, tmp_path_factory, kafka_bootstrap):
    """Settings of a broker of this test only (free ports, its own storage); stopped at the end."""
    if "127.0.0.1" not in kafka_bootstrap or stack_settings.kafka.bootstrap_servers:
        pytest.skip("needs the local broker's jars (no external or containerised broker)")
    stack = {
        **stack_settings.stack.model_dump(),
        "run_dir": tmp_path_factory.mktemp("private_broker"),
        "kafka_port": free_port(),
        "kafka_controller_port": free_port(),
    }
    settings = stack_settings.model_copy(update={"stack": stack_settings.stack.model_copy(update=stack)})
    proc = local_kafka.server(settings)
    local_kafka.start(settings)
    try:
        proc.wait_ready(lambda: local_kafka.is_ready(settings), 120, "private broker")
        yield settings
    finally:
        proc.stop()
