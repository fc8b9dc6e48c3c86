"""The process book behind the `oom` report (docs/protocol.md §9.4): what counts as a change, what counts as gone, and
a real look at real processes below this one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from kernel_runner.procs.oom import MIB, ProcessBook, SeenProcess, look_below

HOG = "import sys, time; hog = b'x' * (48 << 20); print('ready', flush=True); time.sleep(600)"


def seen(pid: int, *, rss: int = 100 * MIB, started: float = 1000.0, name: str = "python3") -> SeenProcess:
    return SeenProcess(pid=pid, ppid=1, name=name, command=f"{name} job.py", rss=rss, started=started)


def test_a_start_an_end_or_moved_memory_is_a_change_and_a_steady_table_is_not() -> None:
    book = ProcessBook(keep_s=30)
    assert book.record({10: seen(10)}, now=0) is True  # a new process
    assert book.record({10: seen(10, rss=110 * MIB)}, now=2) is False  # 10 % and under 16 MiB: rest
    assert book.record({10: seen(10, rss=140 * MIB)}, now=4) is True  # an eighth more
    assert book.record({10: seen(10, rss=140 * MIB), 11: seen(11)}, now=6) is True
    assert book.record({11: seen(11)}, now=8) is True  # 10 ended
    assert book.gone_since(0) == [seen(10, rss=140 * MIB)]  # with the memory it had at the last look


def test_a_process_being_killed_keeps_the_most_memory_a_look_saw() -> None:
    # The kernel frees a killed process's memory before the process is gone: the last look may see next to nothing.
    book = ProcessBook(keep_s=30)
    book.record({10: seen(10, rss=3000 * MIB)}, now=0)
    book.record({10: seen(10, rss=0)}, now=2)
    assert book.alive[10].rss == 0 and book.alive[10].peak_rss == 3000 * MIB
    book.record({}, now=4)
    assert [proc.peak_rss for proc in book.gone_since(0)] == [3000 * MIB]


def test_a_reused_pid_is_a_new_process_and_the_old_one_is_gone() -> None:
    book = ProcessBook(keep_s=30)
    book.record({10: seen(10, started=1000.0)}, now=0)
    assert book.record({10: seen(10, started=2000.0, name="bash")}, now=2) is True
    assert [proc.name for proc in book.gone_since(0)] == ["python3"]
    assert book.alive[10].name == "bash"


def test_gone_processes_are_kept_for_a_while_largest_first() -> None:
    book = ProcessBook(keep_s=10)
    book.record({1: seen(1, rss=5 * MIB), 2: seen(2, rss=900 * MIB), 3: seen(3, rss=50 * MIB)}, now=0)
    book.record({3: seen(3, rss=50 * MIB)}, now=4)
    assert [proc.pid for proc in book.gone_since(4)] == [2, 1]  # the OOM killer's likely pick first
    assert book.gone_since(5) == []
    book.record({}, now=12)
    assert [proc.pid for proc in book.gone_since(0)] == [2, 3, 1]
    book.record({}, now=15)  # the first two were found gone 11 s ago: past keep_s
    assert [proc.pid for proc in book.gone_since(0)] == [3]
    assert book.name_of(3) == "python3" and book.name_of(99) is None


def test_a_real_look_sees_a_process_below_and_its_memory_then_not_after_sigkill() -> None:
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert hog.stdout is not None and hog.stdout.readline() == b"ready\n"
        known: dict[tuple[int, float], tuple[str, str]] = {}
        book = ProcessBook(keep_s=60)
        book.record(look_below(os.getpid(), known), now=0)
        mine = book.alive[hog.pid]
        assert mine.rss >= 48 * MIB and mine.ppid == os.getpid()
        assert mine.name == psutil.Process(hog.pid).name() and mine.command.endswith("time.sleep(600)")
        hog.send_signal(signal.SIGKILL)
        hog.wait(timeout=30)
        book.record(look_below(os.getpid(), known), now=1)
        assert hog.pid not in book.alive
        assert [proc.pid for proc in book.gone_since(1)] == [hog.pid]
        assert (hog.pid, mine.started) not in known  # names of gone processes are not kept for ever
    finally:
        hog.kill()
        hog.wait(timeout=30)
        if hog.stdout is not None:
            hog.stdout.close()


def test_a_zombie_is_dead_already() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # it has ended and is not reaped yet: a zombie
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        assert child.pid not in look_below(os.getpid(), {})
    finally:
        child.wait(timeout=30)
