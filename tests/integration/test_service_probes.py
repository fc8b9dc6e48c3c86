"""Health probes of ordinary services (docs/protocol.md §6.14): real definition files, real servers, real signals.

The servers are tests/children/health_server.py (its control file switches its answer: a status, `hang`) and
listener.py; every wait is bounded, and nothing waits on time passing except through a positive event.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import AgentClient
from kernel_runner.config import RestartDefaults
from kernel_runner.supervision.spec import ChildInfo, ChildState
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.procs import alive, assert_gone
from tests.support.waiting import wait_until

HEALTH_SERVER = str(CHILDREN / "health_server.py")
# Quick probes, so a test takes seconds; the bound of a restart is period × threshold + timeout.
LIVENESS = {"http": {"path": "/health", "expected_status": 200}, "period_s": 0.2, "timeout_s": 0.5,
            "failure_threshold": 2}


def server(control: Path, **probes: Any) -> dict[str, Any]:
    return {"command": [sys.executable, HEALTH_SERVER, "{ports[0]}", "--control", str(control)], "probes": probes}


class Probed:
    """A runner with definition files, and the agent's side of it."""

    def __init__(self, config: RunnerConfig, defs: dict[str, Any]) -> None:
        config.service_defs_dir.mkdir(parents=True, exist_ok=True)
        for name, body in defs.items():
            text = body if isinstance(body, str) else json.dumps(body)
            (config.service_defs_dir / f"{name}.json").write_text(text)
        self.handle: RunnerHandle = start(config)
        self.agent = AgentClient(port_in=self.handle.ports.port_in, port_out=self.handle.ports.port_out)

    def start(self, name: str, port: int, timeout: float = 30.0) -> Any:
        return self.agent.start_service(request(name, port), timeout)

    def child(self, name: str) -> ChildInfo | None:
        return next((c for c in self.handle.which_children() if c.child_id == f"service:{name}"), None)

    def wait_child(self, name: str, match: Any, *, what: str, timeout: float = 30.0) -> ChildInfo:
        def found() -> ChildInfo | None:
            info = self.child(name)
            return info if info is not None and match(info) else None

        info = wait_until(found, timeout=timeout, what=what)
        assert info is not None
        return info

    def close(self) -> None:
        self.agent.close()
        self.handle.stop(timeout=10)


def request(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "ports": [port], "protocol": "http", "options": {}}


@pytest.fixture
def config(runner_config: RunnerConfig) -> RunnerConfig:
    # Quick restarts; the default budget (5 restarts in 60 s) stays.
    return attrs.evolve(runner_config, restart=RestartDefaults(backoff_initial_s=0.05, backoff_cap_s=0.2,
                                                               backoff_jitter=0.0))


@pytest.fixture
def make(config: RunnerConfig) -> Iterator[Any]:
    made: list[Probed] = []

    def build(defs: dict[str, Any], **overrides: Any) -> Probed:
        runner = Probed(attrs.evolve(config, **overrides), defs)
        made.append(runner)
        return runner

    yield build
    for runner in made:
        runner.close()


@pytest.fixture
def control(tmp_path: Path) -> Path:
    path = tmp_path / "control"
    path.write_text("")
    return path


def running_pid(runner: Probed, name: str, *, other_than: int | None = None) -> int:
    info = runner.wait_child(name, lambda c: c.state is ChildState.RUNNING and c.pid not in (None, other_than),
                             what=f"{name} running" + (f" with a pid other than {other_than}" if other_than else ""))
    assert info.pid is not None
    return info.pid


def test_a_server_that_hangs_is_restarted_by_the_supervisor(make: Any, control: Path, log_lines: list[str]) -> None:
    runner = make({"web": server(control, liveness=LIVENESS)})
    port = free_port()
    assert runner.start("web", port) == {"status": "started"}
    pid = running_pid(runner, "web")
    assert runner.child("web").extra["health"] == "healthy"  # type: ignore[union-attr]
    control.write_text("hang")  # the port still accepts; the answer never comes
    info = runner.wait_child("web", lambda c: c.restarts >= 1, what="a restart after the hang")
    assert info.last_exit is not None and info.last_exit.startswith("unhealthy: 2 liveness probes failed in a row")
    assert "no answer within 0.5s" in info.last_exit
    assert_gone([pid], timeout=30)
    control.write_text("")
    running_pid(runner, "web", other_than=pid)
    # The supervisor restarted it (its policy: a backoff), not the service actor on its own.
    assert any("[service:web] asking the supervisor to restart service:web" in line for line in log_lines)
    assert any("[service:web] restarting in" in line for line in log_lines)
    # The verdict's event carries the probe's last answer as fields.
    assert any("[service:web] unhealthy: 2 liveness probes failed in a row" in line for line in log_lines)


def test_a_stopped_process_is_restarted(make: Any, control: Path) -> None:
    runner = make({"web": server(control, liveness=LIVENESS)})
    assert runner.start("web", free_port()) == {"status": "started"}
    pid = running_pid(runner, "web")
    os.kill(pid, signal.SIGSTOP)  # alive, its port still accepts connections, but nothing answers
    try:
        info = runner.wait_child("web", lambda c: c.restarts >= 1 and c.state is ChildState.RUNNING,
                                 what="restarted after SIGSTOP")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert info.pid != pid and info.last_exit is not None and info.last_exit.startswith("unhealthy:")
    assert_gone([pid], timeout=30)


def test_a_flapping_service_goes_fatal_by_its_restart_budget(make: Any, control: Path) -> None:
    control.write_text("500")  # the port opens, and every liveness probe fails
    body = server(control, liveness={**LIVENESS, "failure_threshold": 1, "initial_delay_s": 0.3})
    body["restart"] = {"max_restarts": 2, "period_s": 60, "backoff_initial_s": 0.05}
    runner = make({"web": body})
    assert runner.start("web", free_port()) == {"status": "started"}
    info = runner.wait_child("web", lambda c: c.state is ChildState.FATAL, what="web FATAL", timeout=60)
    assert info.restarts == 2
    assert info.last_exit is not None and "status 500, expected 200" in info.last_exit
    assert info.extra.get("probe_failures", {}).get("liveness", 0) >= 3  # counted across its three lives


def test_readiness_delays_started_until_it_passes(make: Any, control: Path, log_lines: list[str]) -> None:
    control.write_text("503")
    readiness = {"http": {"path": "/health"}, "period_s": 0.2}
    runner = make({"web": server(control, readiness=readiness)})
    runner.agent.send("start-service", json.dumps(request("web", free_port())))
    # The port is open and the readiness probe has failed three times: no answer yet.
    info = runner.wait_child("web", lambda c: c.extra.get("probe_failures", {}).get("readiness", 0) >= 3,
                             what="three failed readiness probes")
    assert info.state is ChildState.STARTING and info.extra["health"] == "starting"
    assert any("[service:web] port-open" in line for line in log_lines)
    assert not any("Service web has started" in line for line in log_lines)
    control.write_text("")
    assert runner.agent.expect("service-result", timeout=30).json() == {"status": "started"}
    started = next(i for i, line in enumerate(log_lines) if "Service web has started" in line)
    ready = next(i for i, line in enumerate(log_lines) if "[service:web] ready after" in line)
    assert ready < started
    assert runner.wait_child("web", lambda c: c.state is ChildState.RUNNING, what="web running").extra["health"] == \
        "healthy"


def test_a_service_not_ready_by_the_reply_deadline_keeps_starting(make: Any, control: Path,
                                                                   log_lines: list[str]) -> None:
    control.write_text("503")
    runner = make({"web": server(control, readiness={"http": {"path": "/health"}, "period_s": 0.2})},
                  service_launch_timeout_s=1.0)
    port = free_port()
    first = runner.start("web", port)
    assert first["status"] == "failed"
    assert first["error"] == ("the service did not become ready in time: web: its readiness probe has not passed yet "
                              "(last: status 503, expected 2xx or 3xx)")
    info = runner.wait_child("web", lambda c: c.state is ChildState.STARTING and c.pid is not None,
                             what="web still starting")
    # A later start-service waits for the same start (the service says so), and the server turns ready meanwhile.
    answers: list[Any] = []
    asking = threading.Thread(target=lambda: answers.append(runner.start("web", port, timeout=30)))
    asking.start()
    wait_until(lambda: any("[service:web] another start-service waits" in line for line in log_lines), timeout=30,
               what="the second start-service waiting")
    control.write_text("")
    asking.join(timeout=60)
    assert answers == [{"status": "started"}]
    assert running_pid(runner, "web") == info.pid  # the same process, never a second one


def test_an_exec_readiness_probe(make: Any, control: Path, tmp_path: Path) -> None:
    ready_file = tmp_path / "ready"
    readiness = {"exec": {"command": ["sh", "-c", f"echo checking port {{ports[0]}}; test -f {ready_file}"]},
                 "period_s": 0.2}
    runner = make({"web": server(control, readiness=readiness)})
    port = free_port()
    runner.agent.send("start-service", json.dumps(request("web", port)))
    info = runner.wait_child("web", lambda c: c.extra.get("probe_failures", {}).get("readiness", 0) >= 2,
                             what="two failed exec probes")
    last = info.extra["last_probe"]
    # The command was rendered with the start's variables; its exit code and output are the answer.
    assert last["probe"] == "readiness" and last["exit_code"] == 1 and last["excerpt"] == f"checking port {port}"
    ready_file.touch()
    assert runner.agent.expect("service-result", timeout=30).json() == {"status": "started"}
    last = runner.wait_child("web", lambda c: c.extra.get("last_probe", {}).get("ok") is True,
                             what="a passing exec probe").extra["last_probe"]
    assert last["exit_code"] == 0


def test_a_bad_probe_definition_is_refused_at_load_with_the_field(make: Any, control: Path,
                                                                  log_lines: list[str]) -> None:
    runner = make({"web": server(control, liveness={"tcp": {}, "http": {"path": "/"}}),
                   "ok": server(control, liveness=LIVENESS)})
    lines = [line for line in log_lines if "service definition skipped" in line]
    assert len(lines) == 1 and lines[0].rstrip().endswith(
        "web.json: a probe needs exactly one of http, tcp or exec, got http and tcp @ $.probes.liveness")
    reply = runner.start("web", free_port())
    assert reply["status"] == "failed" and "@ $.probes.liveness" in reply["error"]
    assert runner.start("ok", free_port()) == {"status": "started"}  # the other file loads as ever


def test_nothing_is_probed_after_the_service_is_stopped(make: Any, control: Path, tmp_path: Path) -> None:
    def counting(log: Path) -> dict[str, Any]:
        liveness = {"exec": {"command": ["sh", "-c", f"echo x >> {log}"]}, "period_s": 0.1}
        return {"command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"],
                "probes": {"liveness": liveness}}

    stopped_log, control_log = tmp_path / "stopped.log", tmp_path / "control.log"
    runner = make({"gone": counting(stopped_log), "stays": counting(control_log)})
    assert runner.start("gone", free_port()) == {"status": "started"}
    wait_until(lambda: stopped_log.exists() and len(stopped_log.read_text().split()) >= 2, timeout=30,
               what="the service probed")
    runner.agent.shutdown_service("gone")
    info = runner.wait_child("gone", lambda c: c.state is ChildState.STOPPED, what="gone STOPPED")
    assert info.extra.get("health") is None  # no longer probed, so no longer known
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("Prober-gone")], timeout=30,
               what="the stopped service's probe thread gone")
    probes_at_stop = len(stopped_log.read_text().split())
    # Positive control: another service's probes run ten times meanwhile; the stopped one's never again.
    assert runner.start("stays", free_port()) == {"status": "started"}
    wait_until(lambda: control_log.exists() and len(control_log.read_text().split()) >= 10, timeout=30,
               what="ten probes of the other service")
    assert len(stopped_log.read_text().split()) == probes_at_stop


def test_liveness_does_not_count_until_the_startup_probe_passed(make: Any, control: Path, tmp_path: Path) -> None:
    control.write_text("503")  # the liveness probe would fail at once
    started_file = tmp_path / "started"
    startup = {"exec": {"command": ["test", "-f", str(started_file)]}, "period_s": 0.2, "failure_threshold": 150}
    liveness = {**LIVENESS, "failure_threshold": 1}
    runner = make({"web": server(control, startup=startup, liveness=liveness)})
    runner.agent.send("start-service", json.dumps(request("web", free_port())))
    info = runner.wait_child("web", lambda c: c.extra.get("probe_failures", {}).get("startup", 0) >= 5,
                             what="five failed startup probes")
    assert "liveness" not in info.extra["probe_failures"] and info.restarts == 0
    assert info.state is ChildState.STARTING
    control.write_text("")
    started_file.touch()
    assert runner.agent.expect("service-result", timeout=30).json() == {"status": "started"}
    info = runner.wait_child("web", lambda c: c.extra.get("last_probe", {}).get("probe") == "liveness",
                             what="a liveness probe after the startup probe passed")
    assert info.extra["health"] == "healthy" and info.restarts == 0


def test_a_startup_probe_that_never_passes_fails_the_start(make: Any, control: Path, log_lines: list[str]) -> None:
    startup = {"http": {"path": "/health"}, "period_s": 0.1, "failure_threshold": 3}
    control.write_text("503")
    runner = make({"web": server(control, startup=startup)})
    reply = runner.start("web", free_port())
    assert reply["status"] == "failed"
    assert reply["error"].startswith("the service failed its startup probe before it was ready: the startup probe did "
                                     "not pass within ")
    assert reply["error"].endswith("last: status 503, expected 2xx or 3xx)")
    wait_until(lambda: runner.child("web") is None, timeout=30, what="the failed first start forgotten")
    assert any("[service:web] unhealthy: the startup probe did not pass" in line for line in log_lines)
