"""start-model-service through the wire: real HTTP model servers on 127.0.0.1, real probes, real restarts."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import AgentClient, ReplyTimeout
from kernel_runner.config import RestartDefaults
from kernel_runner.supervision.spec import ChildInfo, ChildState
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.procs import alive, assert_gone
from tests.support.waiting import wait_until

SERVER = str(CHILDREN / "health_server.py")


@attrs.define
class ModelRunner:
    handle: RunnerHandle
    agent: AgentClient

    def child(self, child_id: str) -> ChildInfo | None:
        return next((c for c in self.handle.which_children() if c.child_id == child_id), None)

    def pid_of(self, child_id: str) -> int:
        def pid() -> int | None:
            info = self.child(child_id)
            return info.pid if info is not None and info.state is ChildState.RUNNING else None

        found = wait_until(pid, timeout=30, what=f"{child_id} running with a pid")
        assert found is not None
        return found

    def status_children(self) -> dict[str, dict[str, Any]]:
        return {c["id"]: c for c in self.agent.status()["kernel_runner"]["children"]}

    def next_health(self, timeout: float = 30.0) -> dict[str, Any]:
        body: dict[str, Any] = self.agent.expect("model-service-status", timeout).json()
        return body


@pytest.fixture
def model_config(runner_config: RunnerConfig) -> RunnerConfig:
    # Quick restarts so liveness tests take seconds; the policy itself is the runner's (tests/unit/test_policy.py).
    # These tests hold the verdict contract of agents before 23.09.1 (docs/protocol.md §12.2);
    # tests/integration/test_model_service_spawned.py holds the newer one.
    return attrs.evolve(runner_config, agent_generation="23.03.11",
                        restart=RestartDefaults(backoff_initial_s=0.05, backoff_cap_s=0.2, backoff_jitter=0.0))


@pytest.fixture
def models(model_config: RunnerConfig) -> Iterator[Any]:
    made: list[ModelRunner] = []

    def make(**overrides: Any) -> ModelRunner:
        handle = start(attrs.evolve(model_config, **overrides))
        runner = ModelRunner(handle=handle, agent=AgentClient(port_in=handle.ports.port_in,
                                                               port_out=handle.ports.port_out))
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.agent.close()
        runner.handle.stop(timeout=5)


def model(name: str, port: int, *server_args: str, health: dict[str, Any] | None = None,
          command: list[str] | str | None = None) -> dict[str, Any]:
    service: dict[str, Any] = {
        "start_command": command if command is not None else [sys.executable, SERVER, str(port), *server_args],
        "port": port,
        "pre_start_actions": None,  # what the agent's schema sends for "none" (docs/protocol.md §7.1); must not fail
        "health_check": health,
    }
    return {"name": name, "model_path": "/models/" + name, "service": service}


def check(**fields: Any) -> dict[str, Any]:
    # The agent's schema sends every optional field, null when unset (docs/protocol.md §7.1).
    body: dict[str, Any] = {"path": "/health", "max_retries": None, "max_wait_time": None,
                            "expected_status_code": None}
    body.update(fields)
    return body


def test_healthy_after_a_delay_is_started_soon_after_with_a_status_transition(models: Any, tmp_path: Path) -> None:
    runner = models()
    port = free_port()
    control = tmp_path / "control"
    control.write_text("503")
    # Upstream answered only at a multiple of max_wait_time; at 60 s that cannot fit in the 30 s waits below, so
    # the answer following readiness within them shows the checker did not wait for max_wait_time (no clock needed).
    payload = model("llama", port, "--control", str(control), health=check(max_retries=10, max_wait_time=60.0))
    runner.agent.send("start-model-service", json.dumps(payload))
    wait_until(lambda: (c := runner.child(f"health:llama-{port}")) is not None and c.extra.get("probes", 0) >= 3,
               timeout=30, what="three failed probes")
    with pytest.raises(ReplyTimeout):
        runner.agent.expect("model-service-result", timeout=0.3)  # not ready: no answer yet
    control.write_text("")  # ready from now on
    assert runner.agent.expect("model-service-result", timeout=30).json() == {"status": "started"}
    assert runner.next_health() == {"model_name": "llama", "is_healthy": True}
    health = runner.status_children()[f"health:llama-{port}"]
    assert health["state"] == "RUNNING"
    extra = health["extra"]
    assert extra["health"] == "healthy" and extra["phase"] == "liveness" and extra["consecutive_failures"] == 0
    assert extra["last_probe"]["status_code"] == 200 and extra["last_probe"]["ok"] is True
    assert extra["last_probe"]["latency_ms"] >= 0 and extra["probes"] >= 4  # probed often, not once per minute
    assert runner.status_children()[f"service:llama-{port}"]["state"] == "RUNNING"
    assert runner.agent.start_model_service(payload, timeout=30) == {"status": "running"}


def test_never_healthy_fails_within_the_budget_and_stops_the_server(models: Any, log_lines: list[str]) -> None:
    runner = models()
    port = free_port()
    # initial_delay lengthens the budget to 4.9 s so a busy machine starts the server (and it answers 503) in it.
    payload = model("slow", port, "--healthy-after", "999",
                    health=check(max_retries=3, max_wait_time=0.3, initial_delay=4.0))
    started = time.monotonic()
    runner.agent.send("start-model-service", json.dumps(payload))
    pid = runner.pid_of(f"service:slow-{port}")
    result = runner.agent.expect("model-service-result", timeout=60).json()
    took = time.monotonic() - started
    assert result == {"status": "failed", "error": "service unhealthy"}
    assert took >= 3 * 0.3 + 4.0, took  # a lower bound only: the whole budget was given
    assert not alive(pid)  # stopped before the answer (docs/protocol.md §7.2 step 4)
    wait_until(lambda: runner.child(f"service:slow-{port}") is None and runner.child(f"health:slow-{port}") is None,
               timeout=30, what="both children gone")
    assert_gone([pid], timeout=30)
    assert any("unhealthy: not healthy within" in line and "status 503, expected 200" in line for line in log_lines)
    with pytest.raises(ReplyTimeout):
        runner.agent.expect("model-service-result", timeout=0.3)  # exactly one reply


def test_without_a_health_check_started_when_the_port_opens(models: Any) -> None:
    # The launch timeout is 120 s and the wait 60 s: only an answer on the port's opening (not at a timeout) fits.
    runner = models(service_launch_timeout_s=120.0)
    port = free_port()
    started = time.monotonic()
    result = runner.agent.start_model_service(model("plain", port, "--listen-after", "0.3"), timeout=60)
    took = time.monotonic() - started
    assert result == {"status": "started"}  # not upstream's `service unhealthy` (docs/protocol.md §10.1 item 9)
    assert took >= 0.3, took  # a lower bound only: not before the port opened
    ids = [c.child_id for c in runner.handle.which_children()]
    assert f"service:plain-{port}" in ids and f"health:plain-{port}" not in ids
    assert runner.agent.get_apps()["data"] == [{"name": f"plain-{port}"}]


@pytest.mark.parametrize(
    ("payload", "error_part"),
    [
        ({"name": "m", "model_path": "/m"}, "service info not provided"),
        ({"name": "m", "service": {"start_command": ["x"], "port": 8000, "health_check": {"path": "/h",
                                                                                          "max_retries": 0}}},
         "$.service.health_check.max_retries"),
        ({"name": "m", "service": {"start_command": [], "port": 8000}}, "$.service.start_command"),
        ({"name": "m", "service": {"start_command": ["x"], "port": 8000,
                                   "health_check": {"path": "/h", "expected_status_code": 99}}},
         "$.service.health_check.expected_status_code"),
        ({"name": "m", "service": {"start_command": ["x"], "port": 70000}}, "$.service.port"),
    ],
)
def test_invalid_payloads_fail_naming_the_problem(models: Any, payload: dict[str, Any], error_part: str) -> None:
    runner = models()
    result = runner.agent.start_model_service(payload, timeout=5)
    assert result["status"] == "failed" and error_part in result["error"], result
    assert [c.child_id for c in runner.handle.which_children() if ":" in c.child_id] == []


def test_wrong_status_code_is_unhealthy(models: Any, log_lines: list[str]) -> None:
    runner = models()
    port = free_port()
    # initial_delay lengthens the budget to 5 s so a busy machine starts the server (and it answers 200) in it.
    payload = model("teapot", port, health=check(max_retries=2, max_wait_time=1.0, expected_status_code=204,
                                                 initial_delay=3.0))
    assert runner.agent.start_model_service(payload, timeout=60) == {"status": "failed", "error": "service unhealthy"}
    assert any("status 200, expected 204" in line for line in log_lines)
    wait_until(lambda: runner.child(f"service:teapot-{port}") is None, timeout=30, what="server stopped")


def test_server_exiting_during_startup_fails_at_once_with_its_output(models: Any) -> None:
    runner = models()
    port = free_port()
    # A 600 s budget against a 60 s wait: only the exit, not the budget, can end this start; the error names the exit.
    payload = model("crashy", port, "--healthy-after", "999", "--exit-after", "0.2", "--code", "3",
                    health=check(max_retries=10, max_wait_time=60.0))
    result = runner.agent.start_model_service(payload, timeout=60)
    assert result["status"] == "failed"
    assert "code 3" in result["error"] and "exiting on purpose" in result["error"]
    wait_until(lambda: not any(":crashy-" in c.child_id for c in runner.handle.which_children()), timeout=30,
               what="both children gone")


def test_missing_executable_fails_with_the_real_reason(models: Any) -> None:
    runner = models()
    port = free_port()
    payload = model("ghost", port, command=["/nonexistent/serve", str(port)], health=check(max_retries=5,
                                                                                           max_wait_time=1.0))
    result = runner.agent.start_model_service(payload, timeout=30)
    assert result == {"status": "failed", "error": "the executable file is not found: /nonexistent/serve"}


def test_liveness_failure_sends_a_transition_and_restarts_the_server(models: Any, tmp_path: Path,
                                                                    log_lines: list[str]) -> None:
    runner = models()
    port = free_port()
    control = tmp_path / "control"
    control.write_text("")
    # Liveness probes every `interval` (0.1 s); max_wait_time is 60 s so that a checker pacing its probes by
    # max_wait_time (2 failures: 120 s) could not report within the 30 s wait below.
    payload = model("live", port, "--control", str(control),
                    health=check(max_retries=2, max_wait_time=60.0, interval=0.1))
    assert runner.agent.start_model_service(payload, timeout=60) == {"status": "started"}
    assert runner.next_health() == {"model_name": "live", "is_healthy": True}
    first_pid = runner.pid_of(f"service:live-{port}")
    control.write_text("500")
    assert runner.next_health(timeout=30) == {"model_name": "live", "is_healthy": False}
    wait_until(lambda: (c := runner.child(f"service:live-{port}")) is not None and c.restarts >= 1
               and c.pid not in (None, first_pid), timeout=30, what="the server restarted with a new pid")
    assert_gone([first_pid], timeout=30)
    server = runner.child(f"service:live-{port}")
    assert server is not None and server.last_exit is not None and server.last_exit.startswith("unhealthy:")
    assert any("[health:live-" in line and "unhealthy:" in line for line in log_lines)
    control.write_text("")  # the restarted server answers 200 again
    assert runner.next_health(timeout=30) == {"model_name": "live", "is_healthy": True}


def test_recovery_without_restart_sends_both_transitions(models: Any, tmp_path: Path) -> None:
    runner = models(model_restart_on_unhealthy=False)
    port = free_port()
    control = tmp_path / "control"
    control.write_text("")
    payload = model("flaky", port, "--control", str(control),
                    health=check(max_retries=2, max_wait_time=1.5, interval=0.05, initial_delay=30.0))
    assert runner.agent.start_model_service(payload, timeout=60) == {"status": "started"}
    assert runner.next_health() == {"model_name": "flaky", "is_healthy": True}
    pid = runner.pid_of(f"service:flaky-{port}")
    control.write_text("503")
    assert runner.next_health(timeout=30) == {"model_name": "flaky", "is_healthy": False}
    extra = runner.status_children()[f"health:flaky-{port}"]["extra"]
    assert extra["health"] == "unhealthy" and extra["consecutive_failures"] >= 2
    assert extra["last_probe"]["status_code"] == 503 and "expected 200" in extra["last_probe"]["error"]
    control.write_text("200")
    assert runner.next_health(timeout=30) == {"model_name": "flaky", "is_healthy": True}
    server = runner.child(f"service:flaky-{port}")
    assert server is not None and server.pid == pid and server.restarts == 0  # reported, not restarted


def test_killed_server_is_restarted_and_healthy_again(models: Any) -> None:
    runner = models()
    port = free_port()
    payload = model("victim", port, health=check(max_retries=3, max_wait_time=1.0, interval=0.1, initial_delay=30.0))
    assert runner.agent.start_model_service(payload, timeout=60) == {"status": "started"}
    assert runner.next_health() == {"model_name": "victim", "is_healthy": True}
    pid = runner.pid_of(f"service:victim-{port}")
    os.kill(pid, signal.SIGKILL)
    assert runner.next_health(timeout=30) == {"model_name": "victim", "is_healthy": False}
    assert runner.next_health(timeout=30) == {"model_name": "victim", "is_healthy": True}
    server = runner.child(f"service:victim-{port}")
    assert server is not None and server.pid != pid and server.restarts == 1
    assert not alive(pid)


def test_string_start_command_runs_through_the_shell(models: Any) -> None:
    runner = models()
    port = free_port()
    command = f"exec {sys.executable} {SERVER} {port} --healthy-after 0.2 --path /v2/health/ready"
    payload = model("shelled", port, command=command, health=check(path="/v2/health/ready", max_retries=10,
                                                                   max_wait_time=0.5, initial_delay=30.0))
    assert runner.agent.start_model_service(payload, timeout=60) == {"status": "started"}
    pid = runner.pid_of(f"service:shelled-{port}")
    import psutil

    assert psutil.Process(pid).cmdline()[1:3] == [SERVER, str(port)]


def test_shutdown_service_stops_server_and_checker(models: Any) -> None:
    runner = models()
    port = free_port()
    payload = model("bye", port, health=check(max_retries=3, max_wait_time=1.0, interval=0.1, initial_delay=30.0))
    assert runner.agent.start_model_service(payload, timeout=60) == {"status": "started"}
    assert runner.next_health() == {"model_name": "bye", "is_healthy": True}
    pid = runner.pid_of(f"service:bye-{port}")
    runner.agent.shutdown_service(f"bye-{port}")
    # The agent asked: both rows stay, STOPPED (docs/operations.md §1.3).
    wait_until(lambda: sorted((c.child_id, c.state) for c in runner.handle.which_children() if ":bye-" in c.child_id)
               == [(f"health:bye-{port}", ChildState.STOPPED), (f"service:bye-{port}", ChildState.STOPPED)],
               timeout=30, what="server and checker stopped")
    assert_gone([pid], timeout=30)
    # Stopping on purpose is not a health transition: the checker stops before the server it watches.
    with pytest.raises(ReplyTimeout):
        runner.agent.expect("model-service-status", timeout=0.3)


def test_shutdown_during_startup_still_gets_its_one_reply(models: Any) -> None:
    runner = models()
    port = free_port()
    payload = model("early", port, "--healthy-after", "999", health=check(max_retries=10, max_wait_time=2.0))
    runner.agent.send("start-model-service", json.dumps(payload))
    pid = runner.pid_of(f"service:early-{port}")
    runner.agent.shutdown_service(f"early-{port}")
    result = runner.agent.expect("model-service-result", timeout=30).json()
    assert result == {"status": "failed",
                      "error": "the model service was stopped before it became healthy (shutdown-service)"}
    assert_gone([pid], timeout=30)
    with pytest.raises(ReplyTimeout):
        runner.agent.expect("model-service-result", timeout=0.3)


def test_enable_false_is_no_health_check_under_the_verdict_contract_too(models: Any) -> None:
    runner = models()
    port = free_port()
    # The server answers 404 on /missing: were it probed, this model could never be answered `started`.
    body = model("off", port, health=check(path="/missing", enable=False))
    assert runner.agent.start_model_service(body, timeout=60) == {"status": "started"}
    ids = [c.child_id for c in runner.handle.which_children()]
    assert f"service:off-{port}" in ids and f"health:off-{port}" not in ids
