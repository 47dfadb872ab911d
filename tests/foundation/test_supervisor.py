"""The process supervisor with real child processes: restart with backoff, giving up, SIGTERM then SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from foundation.supervisor import Child, GaveUp, Supervisor, pid_alive
from tests.helpers import wait_until

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _crasher(starts: Path) -> list[str]:
    """A child that records the time it started, then exits with 3."""
    return _python(f"""
        import sys, time
        with open({str(starts)!r}, "a") as f:
            f.write(f"{{time.monotonic()}}\\n")
        sys.exit(3)
    """)


def _started(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def _sleeper(up: Path, ignore_sigterm: bool = False) -> list[str]:
    return _python(f"""
        import pathlib, signal, time
        {"signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_sigterm else ""}
        pathlib.Path({str(up)!r}).write_text("up")
        time.sleep(60)
    """)


def _three_restarts(supervisor: Supervisor, starts: Path) -> list[float]:
    """Run ``supervisor`` until its crashing child started four times; the start times."""
    supervisor.start()
    try:
        wait_until(
            lambda: supervisor.check() is not None and len(_started(starts)) >= 4, 30, "three restarts", poll_s=0.02
        )
    finally:
        supervisor.stop()
    return _started(starts)


def test_a_child_that_keeps_exiting_is_restarted_with_a_doubling_delay(tmp_path):
    starts = tmp_path / "starts"
    supervisor = Supervisor([Child("crasher", _crasher(starts))], restart_delay_s=0.2, max_delay_s=5, stable_s=60)
    times = _three_restarts(supervisor, starts)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert supervisor.restarts("crasher") >= 3 and supervisor.last_exit("crasher") == 3


def test_a_child_that_ran_long_enough_is_restarted_after_the_first_delay_again(tmp_path):
    starts = tmp_path / "starts"
    supervisor = Supervisor([Child("crasher", _crasher(starts))], restart_delay_s=0.3, max_delay_s=60, stable_s=0)
    times = _three_restarts(supervisor, starts)
    # Doubling would have waited 0.3 + 0.6 + 1.2 s; without a streak the three waits are 0.3 s each.
    assert times[3] - times[0] < 1.8, times


def test_max_restarts_gives_up_and_the_output_goes_to_the_log_file(tmp_path):
    log_file = tmp_path / "logs" / "noisy.log"
    child = Child("noisy", _python("import sys; print('bad config', flush=True); sys.exit(2)"), log_file=log_file)
    supervisor = Supervisor([child], restart_delay_s=0.05, max_restarts=2)
    supervisor.start()
    try:
        with pytest.raises(GaveUp, match="noisy exited with 2 after 2 restarts"):
            wait_until(lambda: supervisor.check() is None, 30, "giving up", poll_s=0.02)
    finally:
        supervisor.stop()
    assert log_file.read_text().splitlines().count("bad config") == 3  # the first start and two restarts


def test_stop_escalates_to_sigkill_for_a_child_that_ignores_sigterm(tmp_path):
    supervisor = Supervisor(
        [Child("polite", _sleeper(tmp_path / "polite")), Child("stubborn", _sleeper(tmp_path / "stubborn", True))],
        grace_s=0.5,
    )
    supervisor.start()
    wait_until(lambda: (tmp_path / "polite").exists() and (tmp_path / "stubborn").exists(), 30, "both children up")
    pids = supervisor.pids
    codes = supervisor.stop()
    assert codes == {"polite": -signal.SIGTERM, "stubborn": -signal.SIGKILL}
    assert not any(pid_alive(pid) for pid in pids.values())
    assert supervisor.check() == [] and supervisor.pids == {"polite": None, "stubborn": None}


def test_run_restarts_a_killed_child_and_stops_everything_on_sigterm(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = _python(f"""
        import os, pathlib, time
        pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))
        time.sleep(60)
    """)
    code = (
        "import sys; from foundation.supervisor import Child, Supervisor; "
        f"sys.exit(Supervisor([Child('sleeper', {child!r})], restart_delay_s=0.1, grace_s=5).run(poll_s=0.05))"
    )
    supervisor = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT)  # noqa: S603
    try:
        first = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "the child"))
        os.kill(first, signal.SIGKILL)
        second = int(wait_until(lambda: pid_file.read_text() != str(first) and pid_file.read_text(), 30, "a restart"))
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        assert not pid_alive(second)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
