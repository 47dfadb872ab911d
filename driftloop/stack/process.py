"""Background server processes of the local stack: run folder, PID file, log file, readiness wait, stop by PID."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from driftloop.stack.exceptions import StackError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerProcess:
    """One server of the stack, known by its run folder (``<run_dir>/<name>``)."""

    name: str
    run_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """PID of the running server, or None (a stale PID file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
        """Start ``argv`` in its own session, output appended to the log file; returns the PID."""
        if (pid := self.pid()) is not None:
            raise StackError(f"{self.name} is already running (pid {pid}); `driftloop stack down` first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(  # noqa: S603 - argv is built by the stack, not from user input
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        log.info("started %s", self.name, extra={"pid": proc.pid, "log": str(self.log_file)})
        return proc.pid

    def wait_ready(self, is_ready: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll ``is_ready`` until it is true; returns the seconds it took.

        Raises:
            StackError: the process died or ``timeout_s`` passed; the message carries the log tail.
        """
        started = time.monotonic()
        last_error = "no answer yet"
        while True:
            if self.pid() is None:
                raise StackError(f"{self.name} exited before it was ready ({what}).\n{self.log_tail()}")
            try:
                if is_ready():
                    return time.monotonic() - started
            except Exception as exc:  # noqa: BLE001 - a probe error means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - started > timeout_s:
                raise StackError(
                    f"{self.name} not ready after {timeout_s:.0f}s ({what}; last probe: {last_error}).\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM the server's process group, SIGKILL after ``timeout_s``; True if something was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            log.warning("%s did not stop in %.0fs; killing", self.name, timeout_s)
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log file, framed for an error message."""
        if not self.log_file.exists():
            return f"(no log at {self.log_file})"
        tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_file} ---\n" + "\n".join(tail)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process counts as gone once reaped.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
