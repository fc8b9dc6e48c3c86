"""The agent's `event` op (docs/protocol.md §9.4) with real processes: an `oom` makes the runner log the processes the
kill probably took, a type it does not know makes one log line, and neither is ever answered."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from kernel_runner.client import AgentClient
from kernel_runner.messages import AgentEvent
from kernel_runner.procs.oom import ProcessWatch
from tests.support.waiting import wait_until

# One write for the line: the runner's children may run with PYTHONUNBUFFERED, where print writes piece by piece.
HOG_CODE = "import os, time; hog = b'x' * (64 << 20); os.write(1, b'hog %d\\n' % os.getpid()); time.sleep(600)"


def lines_with(log_lines: list[str], text: str) -> list[str]:
    return [line for line in log_lines if text in line]


def rss_mib(line: str, pid: int) -> int:
    found = re.search(rf"pid {pid} [^,]+, rss ([\d,]+) MiB", line)
    assert found, line
    return int(found.group(1).replace(",", ""))


def test_an_oom_event_names_the_process_the_kill_took(runner: object, agent: AgentClient,
                                                      log_lines: list[str]) -> None:
    agent.send("exec", f'exec {sys.executable} -c "{HOG_CODE}"')
    pid = int(agent.expect("stdout", timeout=30).payload.split()[1])
    name = psutil.Process(pid).name()
    # A type this runner does not know: one line, logged after the look that the event makes (which saw the hog).
    agent.send("event", json.dumps({"type": "rescheduled", "data": {"to": "node-2"}}))
    wait_until(lambda: lines_with(log_lines, "agent event 'rescheduled': nothing to do for it"), timeout=30,
               what="the line for the unknown event")
    os.kill(pid, signal.SIGKILL)  # as the OOM killer does
    end = agent.collect_run(timeout=30)
    assert (end.status, end.exit_code) == ("finished", 137)
    agent.send("event", json.dumps({"type": "oom", "data": {}}))
    (report,) = wait_until(lambda: lines_with(log_lines, "out of memory"), timeout=30, what="the oom report")
    assert report.startswith("WARNING [runner] out of memory (the agent's oom event): likely killed: "), report
    assert f"pid {pid} {name}, rss " in report and "time.sleep(600)" in report
    assert rss_mib(report, pid) >= 64
    # Neither event was answered: the next message from the runner is the reply to this status.
    agent.send("status")
    assert agent.recv(timeout=10).type == "status"


@pytest.fixture
def hog() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", HOG_CODE], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"hog ")
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_event_may_come_before_the_killed_process_has_ended(hog: subprocess.Popen[bytes],
                                                                 log_lines: list[str]) -> None:
    watch = ProcessWatch(os.getpid(), settle_s=30).start()
    try:
        watch.tell(AgentEvent(type="sync"))
        wait_until(lambda: lines_with(log_lines, "agent event 'sync'"), timeout=30, what="a look that saw the hog")
        watch.tell(AgentEvent(type="oom"))  # Docker's event can overtake the kill: the watch keeps looking a while
        hog.send_signal(signal.SIGKILL)
        hog.wait(timeout=30)
        (report,) = wait_until(lambda: lines_with(log_lines, "out of memory"), timeout=40, what="the oom report")
        assert f"likely killed: pid {hog.pid} " in report and rss_mib(report, hog.pid) >= 64
    finally:
        watch.stop(timeout=5)


def test_when_nothing_ended_the_report_names_the_largest_processes(hog: subprocess.Popen[bytes],
                                                                   log_lines: list[str]) -> None:
    watch = ProcessWatch(os.getpid(), settle_s=0.5).start()
    try:
        watch.tell(AgentEvent(type="oom"))
        watch.tell(AgentEvent(type="oom"))
        (report,) = wait_until(lambda: lines_with(log_lines, "out of memory"), timeout=30, what="the oom report")
        assert "(2 oom events from the agent): no process below the runner ended within 0.5 s of it" in report
        assert f"the largest now: pid {hog.pid} " in report and rss_mib(report, hog.pid) >= 64
    finally:
        watch.stop(timeout=5)
