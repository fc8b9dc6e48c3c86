"""Services and model servers killed, frozen or deaf to SIGTERM under a real runner process (docs/protocol.md §6.13,
§7.2, §1.7). After each fault the supervision tree is back within policy (`status`), and after the runner stops no
process of it is left."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from kernel_runner.client import AgentClient
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.probes import ProbeTally, Scale
from tests.support.procs import alive, assert_gone
from tests.support.reliability import (
    START_TIMEOUT_S,
    assert_core_running,
    assert_no_stray_replies,
    children,
    wait_row,
)
from tests.support.runner_process import RunnerProcess, RunnerProcesses

pytestmark = pytest.mark.reliability

LISTENER = str(CHILDREN / "listener.py")
HEALTH_SERVER = str(CHILDREN / "health_server.py")
RESTART_BOUND_S = 30.0  # backoff starts at 0.5 s (docs/architecture.md §4); this only bounds the wait
STOP_DEADLINE_S = 15.0  # the runner's default
HEALTH_MESSAGES = frozenset({"model-service-status"})


def listener(*args: str) -> dict[str, Any]:
    return {"command": [sys.executable, LISTENER, "{ports[0]}", *args]}


def service_info(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "ports": [port], "protocol": "http", "options": {}}


def model(name: str, port: int, model_path: Path) -> dict[str, Any]:
    """A model server with a quick liveness probe: 0.1 s apart, two misses of 0.5 s make it unhealthy (§7.2)."""
    health = {"path": "/health", "max_retries": 2, "max_wait_time": 0.5, "expected_status_code": 200, "interval": 0.1}
    service = {"start_command": [sys.executable, HEALTH_SERVER, str(port)], "port": port, "pre_start_actions": None,
               "health_check": health}
    return {"name": name, "model_path": str(model_path), "service": service}


def answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.recv(16) == b"hello\n"


def running_pid(agent: AgentClient, child_id: str, *, other_than: int | None = None) -> int:
    row = wait_row(agent, child_id, lambda r: r["state"] == "RUNNING" and bool(r["pid"]) and r["pid"] != other_than,
                   timeout=RESTART_BOUND_S, what=f"{child_id} running" + (f" with a pid other than {other_than}"
                                                                       if other_than else ""))
    pid = row["pid"]
    assert isinstance(pid, int)
    return pid


def health(agent: AgentClient, timeout: float = RESTART_BOUND_S) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(agent.expect("model-service-status", timeout).payload)
    return body


def _start(agent: AgentClient, name: str, port: int) -> Any:
    return agent.start_service(service_info(name, port), timeout=START_TIMEOUT_S)


def start_web(runner_processes: RunnerProcesses, *extra: str,
              **defs: dict[str, Any]) -> tuple[RunnerProcess, AgentClient]:
    runner = runner_processes.start("app", *extra, service_defs=defs or {"web": listener()},
                                    shutdown_deadline_s=STOP_DEADLINE_S)
    return runner, runner.agent()


def test_killed_service_is_restarted(runner_processes: RunnerProcesses, probes: ProbeTally, scale: Scale) -> None:
    """A definition service is transient: a SIGKILL is an abnormal end, so it is restarted (§6.13)."""
    for attempt in probes.repeat("service SIGKILL", scale.pick(1, 10)):
        with attempt:
            runner, agent = start_web(runner_processes)
            port = free_port()
            assert _start(agent, "web", port) == {"status": "started"}
            first = running_pid(agent, "service:web")
            runner.remember(first)
            os.kill(first, signal.SIGKILL)
            second = running_pid(agent, "service:web", other_than=first)
            runner.remember(second)
            assert children(agent)["service:web"]["restarts"] == 1
            assert_gone([first], timeout=5)
            assert _start(agent, "web", port) == {"status": "running"}
            assert answers(port)
            assert_no_stray_replies(agent)
            assert_core_running(agent)
            assert runner.stop() == 0


def fault_a_model_server(runner_processes: RunnerProcesses, name: str, signum: int, *, gone_within_s: float,
                         extra: tuple[str, ...] = ()) -> None:
    """A healthy model server gets `signum`: reported unhealthy, replaced by a healthy one, the old process gone."""
    runner, agent = start_web(runner_processes, *extra)
    port = free_port()
    assert agent.start_model_service(model(name, port, runner.work_dir), timeout=30) == {"status": "started"}
    assert health(agent) == {"model_name": name, "is_healthy": True}
    first = running_pid(agent, f"service:{name}-{port}")
    runner.remember(first)
    os.kill(first, signum)
    assert health(agent) == {"model_name": name, "is_healthy": False}
    assert health(agent) == {"model_name": name, "is_healthy": True}
    runner.remember(running_pid(agent, f"service:{name}-{port}", other_than=first))
    assert_gone([first], timeout=gone_within_s)
    assert_no_stray_replies(agent)
    assert_core_running(agent)
    assert runner.stop() == 0


def test_killed_model_server_is_reported_and_restarted(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                       scale: Scale) -> None:
    for attempt in probes.repeat("model server SIGKILL", scale.pick(1, 10)):
        with attempt:
            fault_a_model_server(runner_processes, "victim", signal.SIGKILL, gone_within_s=5)


def test_frozen_model_server_is_noticed_by_its_probe(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                     scale: Scale) -> None:
    """SIGSTOP: the process is alive but answers nothing. Its liveness probe times out, it is reported unhealthy and
    replaced; SIGTERM cannot reach a stopped process, so the stop ends with SIGKILL (§6.13)."""
    for attempt in probes.repeat("model server SIGSTOP (probe notices)", scale.pick(1, 5)):
        with attempt:
            # Replacing a server that fails its probes is the verdict contract's (docs/protocol.md §12.2); under the
            # spawned one a hung model is only reported unhealthy, as upstream.
            fault_a_model_server(runner_processes, "frozen", signal.SIGSTOP, gone_within_s=10,
                                 extra=("--agent-generation", "23.03.11"))


def test_frozen_service_is_killed_by_the_stop_deadline(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                       scale: Scale) -> None:
    for attempt in probes.repeat("service SIGSTOP (stop deadline notices)", scale.pick(1, 5)):
        with attempt:
            runner, agent = start_web(runner_processes)
            assert _start(agent, "web", free_port()) == {"status": "started"}
            pid = running_pid(agent, "service:web")
            runner.remember(pid)
            os.kill(pid, signal.SIGSTOP)
            assert_core_running(agent)
            # runner.stop waits at most the stated deadline plus slack for the exit, then checks every pid is gone.
            assert runner.stop() == 0
            assert not alive(pid)


def test_services_that_ignore_sigterm_are_gone_within_the_deadline(runner_processes: RunnerProcesses,
                                                                   probes: ProbeTally, scale: Scale) -> None:
    """Each stubborn service also starts a grandchild that ignores SIGTERM: the stop kills both trees (§1.7)."""
    count = scale.pick(5, 20)
    for attempt in probes.repeat("SIGTERM with services ignoring SIGTERM", scale.pick(1, 5)):
        with attempt:
            defs = {f"stubborn{i}": listener("--ignore-term", "--grandchild") for i in range(count)}
            runner, agent = start_web(runner_processes, **defs)
            for name in defs:
                agent.send("start-service", json.dumps(service_info(name, free_port())))
            results = [agent.expect("service-result", timeout=30).json() for _ in defs]
            assert results == [{"status": "started"}] * count
            for name in defs:
                running_pid(agent, f"service:{name}")
            grandchildren = [p for p in runner.descendants() if p.ppid() != runner.pid]
            assert len(grandchildren) >= count, grandchildren
            assert_no_stray_replies(agent, allowed=HEALTH_MESSAGES)
            assert runner.stop() == 0  # bounded by the stated deadline plus slack
