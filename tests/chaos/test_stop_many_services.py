"""SIGTERM to a runner with many services, two model services and a kernel running a cell: it exits 0 within its own
deadline, nothing it started is left, and every port is closed (docs/protocol.md §1.7: one deadline, tiers stop in
parallel)."""

from __future__ import annotations

import signal
import sys

import pytest

from tests.conftest import CHILDREN
from tests.support.ports import free_port, refused
from tests.support.runner_process import RunnerProcesses

pytestmark = pytest.mark.reliability

SERVICES = 30  # 100 in bench/bench_stop.py; enough here to make a slow fan-out show on a busy 2-core machine
DEADLINE_S = 10.0
LISTENER = str(CHILDREN / "listener.py")
HEALTH_SERVER = str(CHILDREN / "health_server.py")


def test_sigterm_with_many_services_exits_0_and_leaves_nothing(runner_processes: RunnerProcesses) -> None:
    defs = {f"svc{i}": {"command": [sys.executable, LISTENER, "{ports[0]}"]} for i in range(SERVICES)}
    runner = runner_processes.start("python", service_defs=defs, shutdown_deadline_s=DEADLINE_S)
    agent = runner.agent()
    assert agent.code("1", timeout=60).exit_code == 0
    ports = []
    for i in range(SERVICES):
        port = free_port()
        reply = agent.start_service({"name": f"svc{i}", "port": port, "ports": [port], "protocol": "http",
                                     "options": {}}, timeout=30)
        assert reply == {"status": "started"}, reply
        ports.append(port)
    for i in range(2):
        port = free_port()
        health = {"path": "/health", "max_retries": 20, "max_wait_time": 1, "expected_status_code": 200}
        model = {"name": f"m{i}", "model_path": str(runner.work_dir), "service": {
            "start_command": [sys.executable, HEALTH_SERVER, str(port)], "port": port, "pre_start_actions": None,
            "health_check": health}}
        assert agent.start_model_service(model, timeout=60) == {"status": "started"}  # spawned (docs/protocol.md §7.2)
        assert agent.expect("model-service-status", timeout=60).json() == {"model_name": f"m{i}", "is_healthy": True}
        ports.append(port)
    agent.send("code", "while True: pass")  # a busy kernel: its polite shutdown could never be answered
    assert not any(refused(port) for port in ports)
    assert runner.stop(signal.SIGTERM, timeout=DEADLINE_S + 5) == 0  # also checks that no process is left
    closed = [port for port in ports if refused(port)]
    assert closed == ports
    log = runner.log_text()
    assert "stopped (clean)" in log
    # Ops follow each service's stop in the log: its SIGTERM, then its exit by that signal; none needed SIGKILL.
    for i in range(SERVICES):
        assert f"[service:svc{i}] stopping: runner shutdown" in log, f"svc{i}"
        assert f"[service:svc{i}] SIGTERM to group" in log, f"svc{i}"
        assert f"[service:svc{i}] exited: shutdown (process killed by signal 15)" in log, f"svc{i}"
    assert "did not stop within its grace" not in log
