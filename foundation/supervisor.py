"""The one process supervisor: start child processes, keep them running, stop them with SIGTERM then SIGKILL.

Two shapes share the same rules (output appended to a log file or inherited, stop = SIGTERM, SIGKILL for what still
runs ``grace_s`` later):

- :class:`Supervisor` keeps children of this process running (``driftloop workers``, the demo's workers): a child
  that exits is started again after a backoff (``restart_delay_s``, doubled for each exit in a row that came sooner
  than ``stable_s`` after its start, at most ``max_delay_s``); with ``max_restarts`` it gives up (:class:`GaveUp`)
  rather than restart a child once more. Usage::

      supervisor = Supervisor([Child("inference-0", argv)], grace_s=40)
      sys.exit(supervisor.run())          # blocks: check every poll_s until SIGTERM/SIGINT, then stop

      supervisor.start()                  # or drive it from your own loop
      supervisor.check()                  # restart what exited (when its backoff is over); returns the names
      supervisor.last_exit("inference-0") # the exit code check() last saw; restarts(name): how many restarts
      supervisor.stop()                   # SIGTERM all, SIGKILL after grace_s; returns the exit codes

- :class:`DetachedServer` is a server that outlives the command that started it (the local stack): started in its own
  session, known by the PID file in its run folder, ``wait_ready`` polls a probe, ``stop`` signals its process group.

    ProcessError            (raised as ``DetachedServer.error``: subclasses name their own type)
    └── GaveUp              (a supervised child exited after its last allowed restart)

Nothing here imports the project: every layer may use it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

log = logging.getLogger(__name__)


class ProcessError(Exception):
    """A process could not be started, did not become ready, or could not be stopped."""


class GaveUp(ProcessError):
    """A supervised child exited after it had been restarted ``max_restarts`` times."""


@dataclass(frozen=True)
class Child:
    """One supervised process: a unique ``name``, its command line, environment (None: this process's), the file its
    output is appended to (None: inherit this process's stdout and stderr) and working folder."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    log_file: Path | None = None
    cwd: Path | None = None


@dataclass
class _Running:
    child: Child
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    streak: int = 0  # exits in a row that came sooner than stable_s after the start
    restart_at: float | None = None  # when an exited child is due to start again
    history: list[int] = field(default_factory=list)  # exit codes, oldest first


class Supervisor:
    """Keeps ``children`` running; see the module docstring.

    Args:
        children: the processes, each with a unique name.
        restart_delay_s: the wait before the first restart of a child; doubled for each quick exit in a row.
        max_delay_s: the longest wait before a restart.
        stable_s: a child that ran at least this long before it exited is restarted after ``restart_delay_s`` again.
        max_restarts: restarts allowed per child (None: no limit); one more exit raises :class:`GaveUp` from
            :meth:`check`.
        grace_s: how long :meth:`stop` waits after SIGTERM before it sends SIGKILL.
    """

    def __init__(
        self,
        children: Sequence[Child],
        *,
        restart_delay_s: float = 1.0,
        max_delay_s: float = 30.0,
        stable_s: float = 60.0,
        max_restarts: int | None = None,
        grace_s: float = 30.0,
    ) -> None:
        names = [child.name for child in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._running = {child.name: _Running(child) for child in children}
        self.restart_delay_s, self.max_delay_s, self.stable_s = restart_delay_s, max_delay_s, stable_s
        self.max_restarts, self.grace_s = max_restarts, grace_s
        self._stop_requested = threading.Event()
        self._stopped = False

    @property
    def pids(self) -> dict[str, int | None]:
        """Name -> PID of the running process (None while it waits for its restart)."""
        return {name: r.proc.pid if r.proc and r.proc.poll() is None else None for name, r in self._running.items()}

    def restarts(self, name: str) -> int:
        """How many times the child ``name`` was started again."""
        return self._running[name].restarts

    def last_exit(self, name: str) -> int | None:
        """The exit code of the child's last exit that :meth:`check` saw (None: none yet)."""
        history = self._running[name].history
        return history[-1] if history else None

    def start(self) -> None:
        """Start every child that is not running."""
        self._stopped = False
        for running in self._running.values():
            if running.proc is None or running.proc.poll() is not None:
                self._spawn(running)

    def check(self) -> list[str]:
        """Restart the children that exited and whose backoff is over; returns their names.

        Raises:
            GaveUp: a child exited after its ``max_restarts``-th restart (the others keep running: call :meth:`stop`).
        """
        if self._stopped:
            return []
        now = time.monotonic()
        restarted = []
        for name, running in self._running.items():
            proc = running.proc
            if proc is None or proc.poll() is None:
                continue
            if running.restart_at is None:
                running.history.append(proc.returncode)
                if self.max_restarts is not None and running.restarts >= self.max_restarts:
                    raise GaveUp(f"{name} exited with {proc.returncode} after {running.restarts} restarts")
                running.streak = running.streak + 1 if now - running.started_at < self.stable_s else 1
                delay = min(self.max_delay_s, self.restart_delay_s * 2 ** (running.streak - 1))
                running.restart_at = now + delay
                extra = {"child": name, "pid": proc.pid, "exit_code": proc.returncode, "restart_in_s": delay}
                log.error("%s exited with %s; restarting in %.1fs", name, proc.returncode, delay, extra=extra)
            if now >= running.restart_at:
                running.restarts += 1
                self._spawn(running)
                restarted.append(name)
        return restarted

    def request_stop(self) -> None:
        """Make :meth:`run` stop its children and return (safe from a signal handler or another thread)."""
        self._stop_requested.set()

    def run(self, poll_s: float = 0.5, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> int:
        """Start the children, restart them as they exit until one of ``signals`` arrives (or :meth:`request_stop`),
        then :meth:`stop` them. Returns 0. Installs the signal handlers, so call it from the main thread.

        Raises:
            GaveUp: see :meth:`check` (the children are stopped first).
        """
        for sig in signals:
            signal.signal(sig, lambda _signum, _frame: self.request_stop())
        try:
            self.start()
            while not self._stop_requested.wait(poll_s):
                self.check()
        finally:
            self.stop()
        return 0

    def stop(self, grace_s: float | None = None) -> dict[str, int | None]:
        """SIGTERM every running child, SIGKILL those still running ``grace_s`` (default: the constructor's) later;
        no child is restarted afterwards. Returns name -> exit code (None: it never started)."""
        self._stopped = True
        procs = {name: r.proc for name, r in self._running.items() if r.proc is not None}
        stop_all(
            [(name, proc.pid, False, _popen_alive(proc)) for name, proc in procs.items() if proc.poll() is None],
            self.grace_s if grace_s is None else grace_s,
        )
        codes = {name: None for name in self._running}
        codes.update({name: proc.wait() for name, proc in procs.items()})
        return codes

    def _spawn(self, running: _Running) -> None:
        running.proc = spawn(running.child.argv, running.child.log_file, running.child.env, running.child.cwd)
        running.started_at = time.monotonic()
        running.restart_at = None
        log.info("started %s", running.child.name, extra={"child": running.child.name, "pid": running.proc.pid})


@dataclass(frozen=True)
class DetachedServer:
    """A background server known by its run folder: PID file ``<run_dir>/<name>.pid``, log ``<run_dir>/<name>.log``.

    Subclasses set ``error`` to the exception type their callers expect (e.g. the stack's ``StackError``).
    """

    name: str
    run_dir: Path
    error: ClassVar[type[Exception]] = ProcessError

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
        if pid_alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        redact: Sequence[str] = (),
    ) -> int:
        """Start ``argv`` in its own session, output appended to the log file (``redact``: values masked in the
        command line written there); returns the PID.

        Raises:
            error: the server is already running.
        """
        if (pid := self.pid()) is not None:
            raise self.error(f"{self.name} is already running (pid {pid}); `driftloop stack down` first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        proc = spawn(argv, self.log_file, env, cwd, new_session=True, redact=redact)
        self.pid_file.write_text(f"{proc.pid}\n")
        log.info("started %s", self.name, extra={"pid": proc.pid, "log": str(self.log_file)})
        return proc.pid

    def wait_ready(self, is_ready: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll ``is_ready`` until it is true; returns the seconds it took. A probe that raises means "not yet".

        Raises:
            error: the process died or ``timeout_s`` passed; the message carries the log tail.
        """
        started = time.monotonic()
        last_error = "no answer yet"
        while True:
            if self.pid() is None:
                raise self.error(f"{self.name} exited before it was ready ({what}).\n{self.log_tail()}")
            try:
                if is_ready():
                    return time.monotonic() - started
            except Exception as exc:  # noqa: BLE001 - a probe error means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - started > timeout_s:
                raise self.error(
                    f"{self.name} not ready after {timeout_s:.0f}s ({what}; last probe: {last_error}).\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM the server's process group, SIGKILL after ``timeout_s``; True if something was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        stop_all([(self.name, pid, True, lambda: pid_alive(pid))], timeout_s)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log file, framed for an error message."""
        if not self.log_file.exists():
            return f"(no log at {self.log_file})"
        tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_file} ---\n" + "\n".join(tail)


def spawn(
    argv: Sequence[str],
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    redact: Sequence[str] = (),
) -> subprocess.Popen:
    """Start ``argv``; with ``log_file`` its output is appended there after a header line (the command, with every
    value of ``redact`` masked: secrets a server takes on its command line), stdin is closed."""
    if log_file is None:
        return subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,  # noqa: S603
            start_new_session=new_session,
        )
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        command = " ".join(argv)
        for secret in filter(None, redact):
            command = command.replace(secret, "***")
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {command}\n".encode())
        out.flush()
        return subprocess.Popen(  # noqa: S603 - argv is built by the caller's code, not from user input
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=new_session,
        )


def stop_all(targets: Sequence[tuple[str, int, bool, Callable[[], bool]]], grace_s: float) -> None:
    """Stop processes given as (name, pid, signal its whole process group, is it alive): SIGTERM to all at once,
    SIGKILL to those alive ``grace_s`` later; returns when none is alive."""
    for _name, pid, group, _alive in targets:
        _signal(pid, signal.SIGTERM, group)
    deadline = time.monotonic() + grace_s
    while any(alive() for *_, alive in targets) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name, pid, group, alive in targets:
        if alive():
            log.warning("%s did not stop within %.1fs of SIGTERM; SIGKILL", name, grace_s, extra={"pid": pid})
            _signal(pid, signal.SIGKILL, group)
    while any(alive() for *_, alive in targets):
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone; a zombie child of this process is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _popen_alive(proc: subprocess.Popen) -> Callable[[], bool]:
    return lambda: proc.poll() is None


def _not_zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        if group:
            os.kill(pid, sig)
