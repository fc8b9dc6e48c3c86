"""The process mechanism with real processes: one watcher thread per process, and the one stop escalation."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from loguru import logger

from kernel_runner.messages import OutputSynced, PipeClosed, ProcessExited
from kernel_runner.procs.process import (
    READ_CHUNK,
    ProcessHandle,
    StopStep,
    WorkerPool,
    descendant_pids,
    stop_process,
    term_then_kill,
    watch_process,
)
from tests.support.procs import alive, assert_gone
from tests.support.waiting import Recorder, wait_until

LOG = logger.bind(child="test")


@pytest.fixture
def owner() -> Iterator[Recorder]:
    made = Recorder()
    yield made
    made.stop()


def spawn(script: str, tmp_path: Path) -> ProcessHandle:
    return ProcessHandle.spawn(["/bin/sh", "-c", script], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                               stdin=subprocess.DEVNULL)


def test_one_watcher_delivers_both_streams_in_order_then_the_exit(owner: Recorder, tmp_path: Path) -> None:
    chunks: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def sink(stream: str, data: bytes) -> None:
        with lock:
            chunks.append((stream, data))

    handle = spawn("for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 7", tmp_path)
    watch_process(handle, owner.ref, sink=sink)
    exited = owner.wait_for(lambda m: isinstance(m, ProcessExited), timeout=10, what="the exit")
    wait_until(lambda: len([m for m in owner.messages if isinstance(m, PipeClosed)]) == 2, timeout=10,
               what="both pipes closed")
    assert exited.returncode == 7 and exited.signal is None and handle.exited.is_set()
    with lock:
        out = b"".join(data for stream, data in chunks if stream == "stdout")
        err = b"".join(data for stream, data in chunks if stream == "stderr")
    assert (out, err) == (b"out1\nout2\nout3\n", b"err1\nerr2\nerr3\n")
    assert sorted(m.stream for m in owner.messages if isinstance(m, PipeClosed)) == ["stderr", "stdout"]


SMALL_WRITER = """
import os
for index in range(3000):
    os.write(2 if index % 100 == 99 else 1, index.to_bytes(4, "big") * 1024)
"""


def test_many_small_writes_arrive_complete_in_order_and_in_bounded_chunks(owner: Recorder, tmp_path: Path) -> None:
    """A writer slower than the reader (4 KiB writes) is read in fewer, bigger chunks (docs/architecture.md §6);
    whatever the chunking, each stream's bytes arrive complete and in order, no chunk over READ_CHUNK."""
    chunks: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def sink(stream: str, data: bytes) -> None:
        with lock:
            chunks.append((stream, data))

    handle = ProcessHandle.spawn([sys.executable, "-c", SMALL_WRITER], env={}, cwd=tmp_path)
    watch_process(handle, owner.ref, sink=sink)
    exited = owner.wait_for(lambda m: isinstance(m, ProcessExited), timeout=30, what="the exit")
    wait_until(lambda: len([m for m in owner.messages if isinstance(m, PipeClosed)]) == 2, timeout=30,
               what="both pipes closed")
    assert exited.returncode == 0
    expected = {"stdout": b"", "stderr": b""}
    for index in range(3000):
        expected["stderr" if index % 100 == 99 else "stdout"] += index.to_bytes(4, "big") * 1024
    with lock:
        assert all(0 < len(data) <= READ_CHUNK for _, data in chunks)
        got = {name: b"".join(data for stream, data in chunks if stream == name) for name in expected}
    assert got == expected


def test_the_exit_is_reported_while_a_grandchild_still_holds_the_pipes(owner: Recorder, tmp_path: Path) -> None:
    handle = spawn("sleep 30 & echo started", tmp_path)
    watch_process(handle, owner.ref, sink=lambda stream, data: None)
    owner.wait_for(lambda m: isinstance(m, ProcessExited), timeout=10, what="the exit before EOF")
    assert not [m for m in owner.messages if isinstance(m, PipeClosed)], "the sleeper keeps the pipes open"
    handle.kill_tree()
    wait_until(lambda: len([m for m in owner.messages if isinstance(m, PipeClosed)]) == 2, timeout=10,
               what="EOF once the sleeper is killed")


def test_a_killed_process_reports_its_signal(owner: Recorder, tmp_path: Path) -> None:
    handle = spawn("exec sleep 30", tmp_path)
    watch_process(handle, owner.ref)
    handle.signal_group(signal.SIGKILL)
    exited = owner.wait_for(lambda m: isinstance(m, ProcessExited), timeout=10, what="the exit")
    assert (exited.returncode, exited.signal) == (-9, 9)


IGNORE_TERM = ("import os, signal, subprocess, sys, time\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"  # leaves the group
               "print(child.pid, flush=True)\n"
               "time.sleep(60)\n")


def test_stop_escalates_to_kill_the_whole_tree_when_term_is_ignored(owner: Recorder, tmp_path: Path,
                                                                     log_lines: list[str]) -> None:
    handle = ProcessHandle.spawn([sys.executable, "-c", IGNORE_TERM], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                                 stdin=subprocess.DEVNULL)
    assert handle.popen.stdout is not None
    escaped = int(handle.popen.stdout.readline())
    watch_process(handle, owner.ref)
    stopper = stop_process(handle, term_then_kill(0.3), log=LOG, what="the stubborn one")
    exited = owner.wait_for(lambda m: isinstance(m, ProcessExited), timeout=10, what="the exit")
    stopper.join(timeout=5)
    assert exited.signal == signal.SIGKILL
    assert_gone([handle.pid, escaped], timeout=5)
    assert any("did not stop within its grace; SIGKILL to its tree" in line for line in log_lines)


def test_stop_ends_at_the_first_step_that_works(owner: Recorder, tmp_path: Path, log_lines: list[str]) -> None:
    trapped = tmp_path / "trapped"
    handle = spawn(f"trap 'exit 5' TERM; touch {trapped}; while :; do sleep 0.05; done", tmp_path)
    watch_process(handle, owner.ref)
    wait_until(trapped.exists, timeout=30, what="the shell's trap in place")  # a SIGTERM before it would kill it
    stopper = stop_process(handle, (StopStep((signal.SIGTERM,), 10.0),), log=LOG, what="the polite one")
    exited = owner.wait_for(lambda m: isinstance(m, ProcessExited), timeout=10, what="the exit")
    stopper.join(timeout=5)
    assert not stopper.is_alive()
    assert exited.returncode == 5
    assert not any("SIGKILL" in line for line in log_lines)
    assert not alive(handle.pid)


TREE = ("import subprocess, sys, time\n"
        "inner = subprocess.Popen(['sleep', '60'])\n"  # a grandchild below a child
        "print(inner.pid, flush=True)\n"
        "time.sleep(60)\n")


def test_descendants_are_the_whole_tree_even_what_left_the_group(tmp_path: Path) -> None:
    """Read from the tree's own /proc children lists (not a scan of every process): the same pids psutil finds."""
    script = (f"import subprocess, sys, threading\n"
              f"kid = subprocess.Popen([sys.executable, '-c', {TREE!r}], stdout=subprocess.PIPE)\n"
              "grand = kid.stdout.readline().decode().strip()\n"
              "box = []\n"  # a child forked by another thread than the main one is listed under that thread
              "t = threading.Thread(target=lambda: box.append(subprocess.Popen(['sleep', '60'], start_new_session=True)))\n"
              "t.start(); t.join()\n"
              "print(kid.pid, grand, box[0].pid, flush=True)\n"
              "import time; time.sleep(60)\n")
    handle = ProcessHandle.spawn([sys.executable, "-c", script], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                                 stdin=subprocess.DEVNULL)
    try:
        assert handle.popen.stdout is not None
        expected = {int(pid) for pid in handle.popen.stdout.readline().split()}
        assert len(expected) == 3
        assert set(descendant_pids(handle.pid)) == expected
        assert {proc.pid for proc in handle.descendants()} == expected
        assert {proc.pid for proc in psutil.Process(handle.pid).children(recursive=True)} == expected
    finally:
        handle.kill_tree()
        handle.popen.wait(timeout=10)
    assert_gone(list(expected), timeout=5)
    assert descendant_pids(handle.pid) == []  # gone (and reaped): nothing below it, no error


def test_stop_process_sends_the_first_signal_before_it_returns(owner: Recorder, tmp_path: Path) -> None:
    """With many stops at once, a signal left to a new thread waits for that thread's turn at the GIL. A stopped
    process keeps a SIGTERM pending, so right after the call it must be in the process's pending set."""
    handle = spawn("exec sleep 60", tmp_path)
    watch_process(handle, owner.ref)
    handle.signal_group(signal.SIGSTOP)
    wait_until(lambda: psutil.Process(handle.pid).status() == psutil.STATUS_STOPPED, timeout=10, what="stopped")
    stopper = stop_process(handle, term_then_kill(10.0), log=LOG, what="the stopped one")
    status = Path(f"/proc/{handle.pid}/status").read_text()
    pending = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
               if line.startswith(("SigPnd:", "ShdPnd:"))}
    assert (pending["SigPnd"] | pending["ShdPnd"]) & (1 << (signal.SIGTERM - 1))
    handle.signal_group(signal.SIGCONT)
    exited = owner.wait_for(lambda m: isinstance(m, ProcessExited), timeout=10, what="the exit")
    stopper.join(timeout=5)
    assert exited.signal == signal.SIGTERM and not stopper.is_alive()


def test_sync_answers_after_the_output_written_so_far(owner: Recorder, tmp_path: Path) -> None:
    delivered: list[bytes] = []

    def sink(stream: str, data: bytes) -> None:
        delivered.append(data)
        owner.ref.tell(("chunk", data))

    ready = tmp_path / "ready"
    handle = spawn(f"printf 'prompt> '; touch {ready}; sleep 30", tmp_path)
    watcher = watch_process(handle, owner.ref, sink=sink)
    wait_until(ready.exists, timeout=10, what="the prompt written")
    assert watcher.sync("token")
    synced = owner.wait_for(lambda m: isinstance(m, OutputSynced), timeout=10, what="OutputSynced")
    assert synced.token == "token"
    messages = owner.messages
    chunks = [m for m in messages if isinstance(m, tuple)]
    assert b"".join(m[1] for m in chunks) == b"prompt> "
    assert messages.index(chunks[-1]) < messages.index(synced), "the prompt goes before the answer"
    handle.kill_tree()
    owner.wait_for(lambda m: isinstance(m, ProcessExited), timeout=10, what="the exit")
    wait_until(lambda: not watcher.is_alive(), timeout=10, what="the watcher ended")
    assert watcher.sync("late") is False  # ended: nothing will be told, the owner goes on at once


def test_the_worker_pool_reuses_idle_threads_and_keeps_only_a_few() -> None:
    pool = WorkerPool("test-pool", keep_idle=1)
    first_done = threading.Event()
    names: list[str] = []

    def job(done: threading.Event) -> None:
        names.append(threading.current_thread().name)
        done.set()

    pool.submit(lambda: job(first_done))
    assert first_done.wait(5)
    wait_until(lambda: pool_idle(pool) == 1, timeout=5, what="the thread idle in the pool")
    second_done = threading.Event()
    pool.submit(lambda: job(second_done))
    assert second_done.wait(5)
    assert names[0] == names[1], "an idle thread takes the next job"
    # Two jobs at once need two threads; afterwards only one of them stays.
    gate, started = threading.Event(), threading.Barrier(3)
    for _ in range(2):
        pool.submit(lambda: (started.wait(5), gate.wait(5)))
    started.wait(5)
    gate.set()
    wait_until(lambda: pool_idle(pool) == 1, timeout=5, what="one idle thread kept")
    workers = [t for t in threading.enumerate() if t.name.startswith("test-pool-")]
    wait_until(lambda: len([t for t in workers if t.is_alive()]) == 1, timeout=5, what="the extra thread gone")


def test_a_failing_job_does_not_cost_the_pool_its_thread(log_lines: list[str]) -> None:
    pool = WorkerPool("test-pool-failing", keep_idle=1)
    pool.submit(lambda: 1 / 0)
    wait_until(lambda: pool_idle(pool) == 1, timeout=5, what="the thread back in the pool")
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(5)
    assert any("job failed: ZeroDivisionError" in line for line in log_lines)


def pool_idle(pool: WorkerPool) -> int:
    with pool._lock:
        return pool._idle
