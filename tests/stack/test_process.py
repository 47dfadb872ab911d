"""The process supervisor with real child processes: start, PID file, readiness, log tail, stop."""

from __future__ import annotations

import sys

import pytest

from driftloop.stack.exceptions import StackError
from driftloop.stack.process import ServerProcess

pytestmark = pytest.mark.unit


def _sleeper(seconds: float = 60) -> list[str]:
    return [sys.executable, "-c", f"import time; print('up', flush=True); time.sleep({seconds})"]


def test_start_ready_stop_leaves_nothing_behind(tmp_path):
    proc = ServerProcess("sleeper", tmp_path)
    pid = proc.start(_sleeper())
    assert proc.pid() == pid
    assert proc.wait_ready(lambda: "up" in proc.log_file.read_text(), timeout_s=10, what="prints up") < 10
    with pytest.raises(StackError, match="already running"):
        proc.start(_sleeper())
    assert proc.stop() is True
    assert proc.pid() is None and not proc.pid_file.exists()
    assert proc.stop() is False


def test_process_that_dies_reports_its_log_tail(tmp_path):
    proc = ServerProcess("crasher", tmp_path)
    proc.start([sys.executable, "-c", "import sys; print('bad config: port in use'); sys.exit(3)"])
    with pytest.raises(StackError, match=r"(?s)exited before it was ready.*bad config: port in use"):
        proc.wait_ready(lambda: False, timeout_s=10, what="never")


def test_timeout_reports_last_probe_error_and_log(tmp_path):
    proc = ServerProcess("slow", tmp_path)
    proc.start(_sleeper())

    def probe() -> bool:
        raise ConnectionRefusedError("port 1 refused")

    try:
        with pytest.raises(StackError, match=r"(?s)not ready after 1s.*port 1 refused.*up"):
            proc.wait_ready(probe, timeout_s=1, what="probe")
    finally:
        proc.stop()


def test_stale_pid_file_is_ignored(tmp_path):
    proc = ServerProcess("stale", tmp_path)
    proc.pid_file.write_text("999999\n")
    assert proc.pid() is None
    assert not proc.pid_file.exists()


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path):
    proc = ServerProcess("stubborn", tmp_path)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc.start([sys.executable, "-c", code])
    proc.wait_ready(lambda: "up" in proc.log_file.read_text(), timeout_s=10, what="up")
    assert proc.stop(timeout_s=0.5) is True
    assert proc.pid() is None
