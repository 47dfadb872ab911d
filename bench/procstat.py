"""CPU time and memory of processes, read from ``/proc``: what ``bench/pipeline.py`` charges to each process.

Linux only, standard library only. The parsing functions take the text of ``/proc/<pid>/stat`` and
``/proc/<pid>/status`` and are pure (``tests/bench/test_procstat.py`` feeds them sample text); the readers around
them return ``None`` for a process that is gone.

CPU time is ``utime + stime`` of ``/proc/<pid>/stat`` (all the process's threads, in clock ticks; children that
exited are not counted); a group of processes (tritonserver and its python backend stubs) is the sum of its
members that were alive at both samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Stat:
    """What the benchmark reads of ``/proc/<pid>/stat``."""

    pid: int
    comm: str
    ppid: int
    cpu_ticks: int  # utime + stime


def parse_stat(text: str) -> Stat:
    """Parse ``/proc/<pid>/stat``. The command name may hold spaces and parentheses: it runs from the first ``(``
    to the *last* ``)``; the fields after it are numbered from 3 (``state``) as in proc(5).

    Raises:
        ValueError: not the text of a stat file.
    """
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 0 or close_at < open_at:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    fields = text[close_at + 1 :].split()
    if len(fields) < 13:
        raise ValueError(f"a /proc/<pid>/stat line with {len(fields)} fields after the name")
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return Stat(
        pid=int(text[:open_at]),
        comm=text[open_at + 1 : close_at],
        ppid=int(fields[1]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
    )


def parse_status_kb(text: str, keys: Iterable[str] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """The ``kB`` values of ``keys`` in ``/proc/<pid>/status`` (a key the file lacks is left out: kernel threads
    and zombies have no ``VmRSS``)."""
    wanted = set(keys)
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name] = int(parts[0])
    return values


def descendants(stats: Iterable[Stat], root: int) -> list[int]:
    """PIDs of every process below ``root`` (children, their children, ...), from one scan of the process table."""
    children: dict[int, list[int]] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def cpu_us_per_event(
    before: Mapping[str, Mapping[int, int]], after: Mapping[str, Mapping[int, int]], events: int, ticks_per_s: int
) -> dict[str, float | None]:
    """CPU microseconds per event of each group of processes between two samples.

    Args:
        before, after: per group name, CPU ticks per PID (:func:`sample`). A PID missing from either sample (it
            started or exited in between) is left out of its group.
        events: events handled between the samples.
        ticks_per_s: the kernel's clock ticks per second (``CLOCK_TICKS``).

    Returns:
        Per group of ``before``, microseconds of CPU per event (rounded to 0.1); None when no PID of the group was
        alive at both samples, or no event was handled.
    """
    result: dict[str, float | None] = {}
    for group, start in before.items():
        end = after.get(group, {})
        common = [pid for pid in start if pid in end]
        if not common or events <= 0:
            result[group] = None
            continue
        ticks = sum(end[pid] - start[pid] for pid in common)
        result[group] = round(ticks / ticks_per_s * 1e6 / events, 1)
    return result


def read_stat(pid: int, proc: Path = PROC) -> Stat | None:
    """``/proc/<pid>/stat`` parsed; None when the process is gone."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def read_memory_kb(pid: int, proc: Path = PROC) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) in kB; empty when the process is gone."""
    try:
        return parse_status_kb((proc / str(pid) / "status").read_text())
    except OSError:
        return {}


def thread_ticks(pid: int, marker: str, proc: Path = PROC) -> dict[int, int] | None:
    """CPU ticks by thread id of ``pid``'s threads whose name holds ``marker`` (``/proc/<pid>/task/<tid>/stat``, e.g.
    the JVM's compiler threads); None when the process is gone."""
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    return {
        stat.pid: stat.cpu_ticks
        for task in tasks
        if (stat := read_stat(int(task.name), task.parent)) and marker in stat.comm
    }


def ticks_between(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU ticks the threads of ``after`` took since ``before`` (a thread new since then counts from zero). A thread
    that ended in between is not in ``after``: what it took since ``before`` is lost, where summing each sample's
    totals would subtract all it ever took (the JVM ends idle compiler threads)."""
    return sum(ticks - before.get(tid, 0) for tid, ticks in after.items())


def all_stats(proc: Path = PROC) -> list[Stat]:
    """Every process's stat (those that vanish while being read are skipped)."""
    stats = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and (stat := read_stat(int(entry.name), proc)) is not None:
            stats.append(stat)
    return stats


def tree(root: int, proc: Path = PROC) -> list[int]:
    """``root`` and every process below it."""
    return [root, *descendants(all_stats(proc), root)]


def sample(groups: Mapping[str, Iterable[int]], proc: Path = PROC) -> dict[str, dict[int, int]]:
    """CPU ticks of each live PID, per group."""
    out: dict[str, dict[int, int]] = {}
    for group, pids in groups.items():
        ticks = {}
        for pid in pids:
            if (stat := read_stat(pid, proc)) is not None:
                ticks[pid] = stat.cpu_ticks
        out[group] = ticks
    return out
