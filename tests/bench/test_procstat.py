"""bench/procstat.py: the /proc accounting of the pipeline benchmark, on sample /proc text."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

_PATH = Path(__file__).resolve().parents[2] / "bench" / "procstat.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_procstat", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


procstat = _load()

# A python worker: utime 1234 (field 14), stime 56 (field 15), ppid 4100.
WORKER_STAT = (
    "4242 (python3) S 4100 4242 4100 0 -1 4194560 81234 0 12 0 1234 56 0 0 20 0 9 0 2333453 1183744000 61234 "
    "18446744073709551615 1 1 0 0 0 0 0 16781312 17442 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
)
# A command name with spaces and parentheses: it ends at the last ')'.
ODD_STAT = "77 (tr (x) y) R 1 77 77 0 -1 4194304 103 0 0 0 7 3 0 0 20 0 1 0 2333453 3133440 390 0 0 0 0\n"

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
PPid:\t4100
VmPeak:\t 1183744 kB
VmHWM:\t  301244 kB
VmRSS:\t  244936 kB
RssAnon:\t  180000 kB
Threads:\t9
"""


def test_parse_stat_reads_the_cpu_ticks_and_the_parent():
    stat = procstat.parse_stat(WORKER_STAT)
    assert (stat.pid, stat.comm, stat.ppid, stat.cpu_ticks) == (4242, "python3", 4100, 1234 + 56)


def test_parse_stat_takes_the_name_up_to_the_last_parenthesis():
    stat = procstat.parse_stat(ODD_STAT)
    assert (stat.pid, stat.comm, stat.ppid, stat.cpu_ticks) == (77, "tr (x) y", 1, 10)


@pytest.mark.parametrize("text", ["", "4242 python3 S 1 2 3", "4242 (python3) S 4100 1 2"])
def test_parse_stat_refuses_what_is_not_a_stat_line(text):
    with pytest.raises(ValueError):
        procstat.parse_stat(text)


def test_parse_status_reads_resident_and_peak_memory():
    assert procstat.parse_status_kb(STATUS) == {"VmRSS": 244936, "VmHWM": 301244}
    assert procstat.parse_status_kb("Name:\tkthreadd\nState:\tS (sleeping)\n") == {}  # a kernel thread has none


def test_descendants_follow_the_tree_and_skip_strangers():
    stats = [
        procstat.Stat(1, "init", 0, 0),
        procstat.Stat(100, "tritonserver", 1, 0),
        procstat.Stat(101, "triton_python_backend_stub", 100, 0),
        procstat.Stat(102, "triton_python_backend_stub", 100, 0),
        procstat.Stat(150, "python3", 101, 0),  # a grandchild
        procstat.Stat(200, "java", 1, 0),
    ]
    assert procstat.descendants(stats, 100) == [101, 102, 150]
    assert procstat.descendants(stats, 200) == []


def test_cpu_per_event_sums_a_group_and_leaves_out_processes_that_came_or_went():
    before = {"triton": {100: 1000, 101: 50, 102: 7}, "worker": {4242: 500}, "gone": {9: 1}}
    after = {"triton": {100: 1100, 101: 250, 103: 999}, "worker": {4242: 530}, "gone": {}}
    # ticks of 10 ms: triton (100 + 200) ticks = 3 s over 1000 events = 3000 us; worker 30 ticks = 300 us
    assert procstat.cpu_us_per_event(before, after, 1000, 100) == {"triton": 3000.0, "worker": 300.0, "gone": None}
    assert procstat.cpu_us_per_event(before, after, 0, 100)["worker"] is None


def test_readers_return_nothing_for_a_process_that_is_gone(tmp_path):
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_text(WORKER_STAT)
    (tmp_path / "4242" / "status").write_text(STATUS)
    (tmp_path / "self").mkdir()
    assert procstat.read_stat(4242, tmp_path).cpu_ticks == 1290
    assert procstat.read_stat(4243, tmp_path) is None
    assert procstat.read_memory_kb(4243, tmp_path) == {}
    assert procstat.sample({"w": [4242, 4243]}, tmp_path) == {"w": {4242: 1290}}
    assert procstat.tree(4242, tmp_path) == [4242]


def test_thread_ticks_count_the_named_threads_of_a_process_by_thread(tmp_path):
    tasks = tmp_path / "4242" / "task"
    for tid, name, ticks in ((4242, "java", 5), (4250, "C2 CompilerThre", 300), (4251, "C1 CompilerThre", 40)):
        (tasks / str(tid)).mkdir(parents=True)
        (tasks / str(tid) / "stat").write_text(
            f"{tid} ({name}) S 1 4242 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 30 0 1 1 1 0 0 0\n"
        )
    before = procstat.thread_ticks(4242, "CompilerThre", tmp_path)
    assert before == {4250: 300, 4251: 40}
    assert procstat.thread_ticks(4242, "GC Thread", tmp_path) == {}
    assert procstat.thread_ticks(4243, "CompilerThre", tmp_path) is None
    # The JVM ends an idle compiler thread and starts another: neither makes the difference negative.
    assert procstat.ticks_between(before, {4250: 310, 4260: 7}) == 17
