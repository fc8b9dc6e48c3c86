"""start-model-service under the spawned contract of 23.09.1+ agents (docs/protocol.md §7.2, §12.2): the reply says
the server runs, health follows as model-service-status, and no model is stopped or restarted for failing its checks.

Real HTTP model servers on 127.0.0.1 (tests/children/health_server.py), switched through a control file, so every
transition is caused by the test and awaited, never timed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from kernel_runner import RunnerConfig, start
from kernel_runner.client import AgentClient, ReplyTimeout
from kernel_runner.config import RestartDefaults
from kernel_runner.supervision.spec import ChildState
from tests.conftest import CHILDREN
from tests.integration.test_model_service import ModelRunner
from tests.support.ports import free_port
from tests.support.procs import alive, assert_gone
from tests.support.waiting import wait_until

SERVER = str(CHILDREN / "health_server.py")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "llama"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def spawned(runner_config: RunnerConfig) -> Iterator[ModelRunner]:
    config = attrs.evolve(runner_config, agent_generation="23.09.1", model_probe_interval_s=0.1,
                          restart=RestartDefaults(backoff_initial_s=0.05, backoff_cap_s=0.2, backoff_jitter=0.0))
    handle = start(config)
    runner = ModelRunner(handle=handle, agent=AgentClient(port_in=handle.ports.port_in,
                                                          port_out=handle.ports.port_out))
    try:
        yield runner
    finally:
        runner.agent.close()
        handle.stop(timeout=5)


def payload(name: str, port: int, model_path: Path, *server_args: str, health: dict[str, Any] | None = None,
            command: list[str] | None = None) -> dict[str, Any]:
    return {"name": name, "model_path": str(model_path), "service": {
        "start_command": command if command is not None else [sys.executable, SERVER, str(port), *server_args],
        "port": port, "pre_start_actions": None, "health_check": health,
    }}


def check(**fields: Any) -> dict[str, Any]:
    return {"path": "/health", "max_retries": 2, "max_wait_time": 1.0, "expected_status_code": 200,
            "interval": 0.1, **fields}


def test_the_reply_says_the_server_runs_and_health_follows_each_transition(spawned: ModelRunner, model_dir: Path,
                                                                             tmp_path: Path) -> None:
    port = free_port()
    control = tmp_path / "control"
    control.write_text("503")  # not ready: a verdict contract could not answer `started` now
    spawned.agent.send("start-model-service", json.dumps(payload("llama", port, model_dir, "--control",
                                                                 str(control), health=check())))
    assert spawned.agent.expect("model-service-result", timeout=30).json() == {"status": "started"}
    pid = spawned.pid_of(f"service:llama-{port}")
    control.write_text("")
    assert spawned.next_health() == {"model_name": "llama", "is_healthy": True}
    control.write_text("500")
    assert spawned.next_health() == {"model_name": "llama", "is_healthy": False}
    extra = spawned.status_children()[f"health:llama-{port}"]["extra"]
    assert extra["health"] == "unhealthy" and extra["consecutive_failures"] > 2  # more than max_retries
    control.write_text("")
    assert spawned.next_health() == {"model_name": "llama", "is_healthy": True}
    server = spawned.status_children()[f"service:llama-{port}"]
    assert (server["pid"], server["restarts"]) == (pid, 0)  # never restarted for failing its checks
    assert alive(pid)


def test_without_a_health_check_healthy_at_once_and_never_probed(spawned: ModelRunner, model_dir: Path) -> None:
    port = free_port()
    result = spawned.agent.start_model_service(payload("plain", port, model_dir), timeout=30)
    assert result == {"status": "started"}
    assert spawned.next_health() == {"model_name": "plain", "is_healthy": True}
    assert spawned.status_children()[f"health:plain-{port}"]["extra"]["probes"] == 0


def test_enable_false_means_no_probing_even_without_a_health_endpoint(spawned: ModelRunner, model_dir: Path) -> None:
    port = free_port()
    # The server answers 404 on /missing: probed, this model could never become healthy.
    body = payload("noprobe", port, model_dir, health=check(path="/missing", enable=False, initial_delay=60))
    assert spawned.agent.start_model_service(body, timeout=30) == {"status": "started"}
    assert spawned.next_health() == {"model_name": "noprobe", "is_healthy": True}
    pid = spawned.pid_of(f"service:noprobe-{port}")
    extra = spawned.status_children()[f"health:noprobe-{port}"]["extra"]
    assert extra["probes"] == 0 and extra["health"] == "healthy" and alive(pid)


def test_a_model_still_loading_past_its_budget_is_kept_and_becomes_healthy(spawned: ModelRunner, model_dir: Path,
                                                                          tmp_path: Path) -> None:
    port = free_port()
    control = tmp_path / "control"
    control.write_text("503")
    # The verdict contract's budget would be 2 × 0.2 + 0.3 s; this model loads until the test says so.
    body = payload("big", port, model_dir, "--control", str(control),
                   health=check(max_wait_time=0.2, initial_delay=0.3))
    assert spawned.agent.start_model_service(body, timeout=30) == {"status": "started"}
    pid = spawned.pid_of(f"service:big-{port}")
    assert spawned.next_health() == {"model_name": "big", "is_healthy": False}  # reported, not killed
    assert alive(pid)
    control.write_text("")
    assert spawned.next_health() == {"model_name": "big", "is_healthy": True}
    assert spawned.status_children()[f"service:big-{port}"]["pid"] == pid


def test_interval_zero_is_accepted(spawned: ModelRunner, model_dir: Path) -> None:
    port = free_port()
    body = payload("eager", port, model_dir, health=check(interval=0))
    assert spawned.agent.start_model_service(body, timeout=30) == {"status": "started"}
    assert spawned.next_health() == {"model_name": "eager", "is_healthy": True}


def test_the_server_runs_in_the_model_folder(spawned: ModelRunner, model_dir: Path) -> None:
    port = free_port()
    command = ["/bin/sh", "-c", f"pwd > cwd.txt && exec {sys.executable} {SERVER} {port}"]
    assert spawned.agent.start_model_service(payload("cwd", port, model_dir, command=command),
                                             timeout=30) == {"status": "started"}
    written = model_dir / "cwd.txt"
    wait_until(lambda: written.is_file() and written.read_text().strip(), timeout=30, what="the server's cwd")
    assert Path(written.read_text().strip()).resolve() == model_dir.resolve()


def test_a_missing_model_folder_or_program_fails_and_nothing_follows(spawned: ModelRunner, tmp_path: Path,
                                                                    model_dir: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = spawned.agent.start_model_service(payload("gone", free_port(), missing), timeout=30)
    assert result == {"status": "failed", "error": f"the model directory does not exist: {missing}"}
    port = free_port()
    result = spawned.agent.start_model_service(
        payload("broken", port, model_dir, command=["/nonexistent/model-server"], health=check()), timeout=30)
    assert result == {"status": "failed", "error": "the executable file is not found: /nonexistent/model-server"}
    wait_until(lambda: spawned.child(f"health:broken-{port}") is None, timeout=30, what="the checker gone")
    with pytest.raises(ReplyTimeout):
        spawned.agent.expect("model-service-status", timeout=0.3)  # the `failed` reply said it all


def test_a_server_that_dies_is_reported_unhealthy_then_healthy_after_its_restart(spawned: ModelRunner,
                                                                                model_dir: Path) -> None:
    port = free_port()
    assert spawned.agent.start_model_service(payload("crashy", port, model_dir, health=check()),
                                             timeout=30) == {"status": "started"}
    assert spawned.next_health() == {"model_name": "crashy", "is_healthy": True}
    pid = spawned.pid_of(f"service:crashy-{port}")
    os.kill(pid, signal.SIGKILL)
    assert spawned.next_health() == {"model_name": "crashy", "is_healthy": False}
    assert spawned.next_health() == {"model_name": "crashy", "is_healthy": True}
    new_pid = spawned.pid_of(f"service:crashy-{port}")
    assert new_pid != pid
    spawned.agent.shutdown_service(f"crashy-{port}")
    assert_gone([new_pid], timeout=30)
    # The agent asked: both rows stay, STOPPED (docs/operations.md §1.3).
    wait_until(lambda: all((row := spawned.child(f"{kind}:crashy-{port}")) is not None and row.state is ChildState.STOPPED
                           for kind in ("service", "health")), timeout=30, what="both children stopped")


def test_a_newer_payload_shape_raises_the_detected_generation(runner_config: RunnerConfig, model_dir: Path) -> None:
    handle = start(runner_config)  # auto
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            before = agent.status(timeout=30)["kernel_runner"]["agent_generation"]
            assert (before["row"], before["contract"], before["pinned"]) == ("23.09.1", "spawned", False)
            body = payload("shaped", free_port(), model_dir, health=check())  # `interval`: only the 24.12+ schema
            assert agent.start_model_service(body, timeout=30) == {"status": "started"}
            after = agent.status(timeout=30)["kernel_runner"]["agent_generation"]
            assert after["row"] == "24.12" and "interval" in after["reason"]
    finally:
        handle.stop(timeout=5)
