"""A kernel that hangs while alive is noticed through its heartbeat, and the kernel's channel thread survives bad
messages and is replaced when it dies (docs/protocol.md §4.7, docs/architecture.md §7). Real ipykernels, stopped
with SIGSTOP; the bookkeeping itself with explicit times."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from kernel_runner import RunnerConfig
from kernel_runner.actors.kernel.actor import LIFECYCLE, Phase
from kernel_runner.actors.kernel.channels import KernelChannels
from kernel_runner.actors.kernel.jupyter import HeartbeatWatch
from kernel_runner.supervision.spec import ChildState
from tests.integration.test_query_python import RUN_TIMEOUT_S, Query, kernel_phases, start_query
from tests.support.faults import once
from tests.support.procs import assert_gone
from tests.support.waiting import wait_until

# Small enough that a test notices a hang in seconds; ipykernel echoes from a thread of its own within milliseconds,
# so a busy machine does not make a healthy kernel miss 3 s.
INTERVAL_S, TIMEOUT_S = 0.2, 3.0
IDLE_INTERVAL_S = 1.0  # a kernel stopped between runs is noticed by the rare idle pings (60 s in production)
DETECT_S = 30.0


@pytest.fixture
def watched(runner_config: RunnerConfig) -> Iterator[Query]:
    handle, client = start_query(runner_config, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S,
                                 heartbeat_idle_interval_s=IDLE_INTERVAL_S)
    try:
        yield Query(handle, client)
    finally:
        client.close()
        handle.stop(timeout=5)


def stop_kernel(query: Query) -> int:
    pid = int(query.ready_kernel().extra["kernel_pid"])
    os.kill(pid, signal.SIGSTOP)
    return pid


# ---- the bookkeeping -------------------------------------------------------------------------------------------------


def test_only_a_ping_left_unanswered_for_the_timeout_makes_a_kernel_hung() -> None:
    watch = HeartbeatWatch.starting(100.0, interval_s=3.0, timeout_s=15.0)
    assert watch.ping_due(100.0) and watch.next_due() == 100.0
    watch.pinged(100.0)
    assert not watch.ping_due(102.9) and watch.ping_due(103.0)
    watch.echoed()
    assert watch.silent_for(200.0) == 0.0 and not watch.is_lost(200.0)  # nobody pinged since: nothing to judge
    watch.pinged(200.0)
    watch.pinged(203.0)  # a second ping does not restart the clock of the first
    assert watch.next_due() == 206.0
    assert not watch.is_lost(214.9) and watch.is_lost(215.0) and watch.silent_for(215.0) == 15.0
    watch.echoed()  # a late echo, drained after a stall of the runner's own thread, clears it
    assert not watch.is_lost(300.0)


def test_a_paused_watch_judges_nothing_and_pings_again_at_once() -> None:
    watch = HeartbeatWatch.starting(0.0, interval_s=3.0, timeout_s=15.0)
    watch.pinged(0.0)
    watch.pause(10.0)  # a kernel that echoes between cells only started a cell
    assert not watch.is_lost(1000.0) and watch.ping_due(10.0)
    watch.pinged(1000.0)
    assert watch.next_due() == 1003.0 and watch.is_lost(1015.0)


# ---- a hung kernel ---------------------------------------------------------------------------------------------------


def test_a_kernel_stopped_during_a_run_ends_the_run_once_and_is_replaced(
    watched: Query, log_lines: list[str]
) -> None:
    watched.send("import time\nprint('busy', flush=True)\ntime.sleep(600)")
    assert watched.client.expect("stdout", RUN_TIMEOUT_S).payload == b"busy\n"
    first = watched.ready_kernel()
    pid = stop_kernel(watched)
    result = watched.client.collect_run(DETECT_S)
    assert (result.status, result.exit_code) == ("finished", 128 + signal.SIGKILL)
    assert re.fullmatch(
        rb"kernel-runner: the Jupyter kernel \(python3\) did not answer its heartbeat for \d+ s while this code ran "
        rb"\(it is stopped or hung\), so it was killed; it is being restarted\n", result.stderr)
    assert_gone([pid], timeout=5)
    assert any("unhealthy: the python3 kernel has not answered its heartbeat" in line for line in log_lines)
    # Not RUNNING once detected: READY -> DYING, which the supervisor sees as BACKOFF, and the exit says why.
    phases = kernel_phases(log_lines)
    assert phases[phases.index(Phase.READY) + 1] is Phase.DYING and LIFECYCLE.child_states[Phase.DYING] is ChildState.BACKOFF
    wait_until(lambda: any("exited: unhealthy: no heartbeat for" in line for line in log_lines), timeout=10,
               what="the supervisor to log why the kernel ended")
    # Exactly one finished: the next reply is the next run's own.
    result = watched.run("print('fresh kernel')")
    assert (result.status, result.exit_code, result.stdout) == ("finished", 0, b"fresh kernel\n")
    second = watched.ready_kernel()
    assert second.generation == first.generation + 1 and second.extra["kernel_pid"] != pid


def test_a_kernel_stopped_between_runs_is_replaced_before_the_next_run(watched: Query, log_lines: list[str]) -> None:
    assert watched.run("x = 41").exit_code == 0
    pid = stop_kernel(watched)
    wait_until(lambda: watched.kernel_info().extra.get("kernel_pid") != pid, timeout=DETECT_S,
               what="the hung kernel to be replaced")
    assert_gone([pid], timeout=5)
    assert any("unhealthy: the python3 kernel has not answered its heartbeat" in line for line in log_lines)
    result = watched.run("print(1 + 1)")
    assert (result.exit_code, result.stdout) == (0, b"2\n")  # a new kernel: nothing of the old one's state
    assert watched.run("x").exit_code == 1


def test_a_healthy_kernel_is_never_judged_hung(watched: Query, log_lines: list[str]) -> None:
    # A CPU-bound cell (it holds the GIL) longer than the timeout: ipykernel's heartbeat thread echoes all along.
    busy = f"import time\nend = time.monotonic() + 1.5 * {TIMEOUT_S}\nwhile time.monotonic() < end: pass\nprint('done')"
    result = watched.run(busy, timeout=RUN_TIMEOUT_S + 5)
    assert (result.exit_code, result.stdout) == (0, b"done\n")
    assert not any("heartbeat" in line and "unhealthy" in line for line in log_lines)
    assert watched.kernel_info().generation == 1


# ---- the channel thread survives a bad message, and its death is noticed -------------------------------------------


def test_a_message_that_breaks_a_handler_is_skipped_and_the_channel_thread_goes_on(
    monkeypatch: pytest.MonkeyPatch, watched: Query, log_lines: list[str]
) -> None:
    original = KernelChannels._on_iopub

    def on_iopub(self: KernelChannels, msg: dict[str, Any]) -> None:
        if "boom" in str(msg.get("content", {}).get("text", "")):
            raise RuntimeError("handler bug (test)")
        original(self, msg)

    monkeypatch.setattr(KernelChannels, "_on_iopub", on_iopub)
    result = watched.run("import sys, time\nprint('boom', flush=True)\ntime.sleep(0.3)\nprint('after')")
    assert (result.status, result.exit_code, result.stdout) == ("finished", 0, b"after\n")
    failures = [line for line in log_lines if "could not be handled" in line]
    assert len(failures) == 1 and "handler bug (test)" in failures[0] and "boom" in failures[0]
    assert watched.run("print('next')").stdout == b"next\n"
    assert watched.kernel_info().generation == 1


# The injected SystemExit really ends the thread: that is the point, so pytest's report of it is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_channel_thread_ends_the_incarnation_and_the_kernel_is_restarted(
    monkeypatch: pytest.MonkeyPatch, runner_config: RunnerConfig, log_lines: list[str]
) -> None:
    monkeypatch.setattr(KernelChannels, "_check_run_end",
                        once(SystemExit("thread killed (test)"), KernelChannels._check_run_end))
    handle, client = start_query(runner_config, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=TIMEOUT_S)
    try:
        query = Query(handle, client)
        wait_until(lambda: any("the kernel channel thread ended unexpectedly" in line for line in log_lines),
                   timeout=RUN_TIMEOUT_S, what="the channel thread's death")
        result = query.run("print('served by the next kernel')")
        assert (result.exit_code, result.stdout) == (0, b"served by the next kernel\n")
        info = query.ready_kernel()
        assert info.generation == 2 and info.restarts == 1
        assert any("exited: crashed: kernel channels failed: the channel thread ended unexpectedly" in line
                   for line in log_lines)
    finally:
        client.close()
        handle.stop(timeout=5)
