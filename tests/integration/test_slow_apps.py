"""Slow apps are not lost (docs/protocol.md §6.2 steps 2 and 10): the agent is answered before it gives up, the app
keeps starting, and a later start-service finds the same process, never a second one."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import psutil
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import AgentClient
from kernel_runner.supervision.spec import ChildState
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.waiting import wait_until

REPLY_WITHIN_S = 3.0


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "gate"


@pytest.fixture
def slow_runner(runner_config: RunnerConfig, gate: Path) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    defs = runner_config.service_defs_dir
    defs.mkdir(parents=True)
    command = [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}", "--gate", str(gate)]
    (defs / "slow.json").write_text(json.dumps({"command": command}))
    handle = start(attrs.evolve(runner_config, service_launch_timeout_s=REPLY_WITHIN_S))
    with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
        yield handle, agent
    handle.stop(timeout=5)


def request(port: int) -> dict[str, object]:
    return {"name": "slow", "port": port, "ports": [port], "protocol": "http", "options": {}}


def listeners() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("listener.py" in part for part in p.info["cmdline"] or ()) and "--gate" in (p.info["cmdline"] or ())]


def service_pid(handle: RunnerHandle) -> int | None:
    info = next((c for c in handle.which_children() if c.child_id == "service:slow"), None)
    return info.pid if info is not None else None


def test_an_app_slower_than_the_agent_keeps_starting_and_is_found_again(
        slow_runner: tuple[RunnerHandle, AgentClient], gate: Path) -> None:
    handle, agent = slow_runner
    port = free_port()
    first = agent.start_service(request(port), timeout=REPLY_WITHIN_S + 30)
    assert first == {"status": "failed", "error": "opening the service port timed out: slow"}  # upstream's text
    pid = wait_until(lambda: service_pid(handle), timeout=30, what="the slow app's pid")
    info = next(c for c in handle.which_children() if c.child_id == "service:slow")
    assert info.state is ChildState.STARTING  # not killed: still starting

    agent.send("start-service", json.dumps(request(port)))  # waits for this same start
    gate.touch()
    assert agent.expect("service-result", timeout=REPLY_WITHIN_S + 30).json() == {"status": "started"}
    assert service_pid(handle) == pid
    assert agent.start_service(request(port), timeout=30) == {"status": "running"}
    assert service_pid(handle) == pid
    assert listeners() == [pid]  # one process, never a second


def test_a_later_start_that_also_outwaits_the_agent_is_answered_failed_once(
        slow_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, agent = slow_runner
    port = free_port()
    assert agent.start_service(request(port), timeout=REPLY_WITHIN_S + 30)["status"] == "failed"
    pid = wait_until(lambda: service_pid(handle), timeout=30, what="the slow app's pid")
    second = agent.start_service(request(port), timeout=REPLY_WITHIN_S + 30)
    assert second == {"status": "failed", "error": "opening the service port timed out: slow"}
    assert service_pid(handle) == pid
    agent.shutdown_service("slow")
    wait_until(lambda: service_pid(handle) is None, timeout=30, what="the slow app stopped")
