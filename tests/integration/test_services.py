"""Service definitions through the wire: real definition files, real processes, real ports."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import AgentClient
from kernel_runner.supervision.spec import ChildState
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.waiting import wait_until


def write_defs(directory: Path, defs: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in defs.items():
        text = body if isinstance(body, str) else json.dumps(body)
        (directory / f"{name}.json").write_text(text)


WEB = {
    "command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"],
    "url_template": "http://{host}:{port}/",
    "allowed_arguments": ["--delay"],
    "allowed_envs": ["FOO"],
    "env": {"WEB_{ports[0]}": "v{ports[0]}"},
    "prestart_actions": [{"action": "write_file", "args": {"body": ["hello {ports[0]}"], "filename": "web.conf"}}],
}


@pytest.fixture
def services_runner(runner_config: RunnerConfig) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    write_defs(runner_config.service_defs_dir, {
        "web": WEB,
        "broken": '{"command": ["x"], "no_such_key": 1}',
        "notjson": "{oops",
        "quiet": {"command": [], "noop": True},
    })
    handle = start(runner_config)
    with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
        yield handle, agent
    handle.stop(timeout=5)


def info(name: str, port: int, **options: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "ports": [port], "protocol": "http", "options": options}


def test_definition_starts_with_prestart_env_and_template(services_runner: tuple[RunnerHandle, AgentClient],
                                                          work_dir: Path) -> None:
    handle, agent = services_runner
    port = free_port()
    assert agent.start_service(info("web", port)) == {"status": "started"}
    assert (work_dir / "web.conf").read_text() == f"hello {port}\n"
    child = next(c for c in handle.which_children() if c.child_id == "service:web")
    import psutil

    environ = psutil.Process(child.pid).environ()
    assert environ[f"WEB_{port}"] == f"v{port}"
    assert agent.start_service(info("web", port)) == {"status": "running"}


def test_broken_definitions_are_reported_and_the_good_one_still_serves(
    services_runner: tuple[RunnerHandle, AgentClient], log_lines: list[str]
) -> None:
    _, agent = services_runner
    apps = agent.get_apps()
    # Files load in name order (upstream: directory-listing order, which is not stable).
    assert apps == {"status": "done", "data": [
        {"name": "quiet"},
        {"name": "web", "url_template": "http://{host}:{port}/", "allowed_arguments": ["--delay"],
         "allowed_envs": ["FOO"]},
    ]}
    broken = agent.start_service(info("broken", free_port()))
    assert broken["status"] == "failed" and "broken.json" in broken["error"] and "no_such_key" in broken["error"]
    notjson = agent.start_service(info("notjson", free_port()))
    assert notjson["status"] == "failed" and "notjson.json" in notjson["error"]
    assert agent.get_apps("web")["data"][0]["name"] == "web"
    assert agent.get_apps("nope") == {"status": "done", "data": []}


def test_disallowed_arguments_and_envs_use_upstream_texts(services_runner: tuple[RunnerHandle, AgentClient]) -> None:
    _, agent = services_runner
    port = free_port()
    bad_arg = agent.start_service(info("web", port, arguments={"--evil": "1"}))
    assert bad_arg == {"status": "failed",
                       "error": "DisallowedArgument('Argument --evil not allowed for service web')"}
    bad_env = agent.start_service(info("web", port, envs={"BAR": "1"}))
    assert bad_env == {"status": "failed",
                       "error": "DisallowedEnvironment('Environment variable BAR not allowed for service web')"}


def test_noop_preopen_pty_and_unsupported(services_runner: tuple[RunnerHandle, AgentClient],
                                          log_lines: list[str]) -> None:
    _, agent = services_runner
    assert agent.start_service(info("quiet", free_port())) == {"status": "started"}
    assert agent.start_service({"name": "model-8000", "port": 8000, "protocol": "preopen"}) == {"status": "started"}
    assert agent.start_service({"name": "term", "port": 1, "protocol": "pty"}) == {"status": "failed",
                                                                                   "error": "not implemented yet"}
    assert agent.start_service(info("nope", free_port())) == {"status": "failed", "error": "unsupported service"}
    wait_until(lambda: any("The service nope is not supported." in line for line in log_lines), timeout=5,
               what="the unsupported log line")


def test_shutdown_service_then_start_again(services_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, agent = services_runner
    port = free_port()
    assert agent.start_service(info("web", port)) == {"status": "started"}
    agent.shutdown_service("web")
    wait_until(lambda: any(c.child_id == "service:web" and c.state is ChildState.STOPPED
                           for c in handle.which_children()), timeout=5, what="web stopped")
    rows = {c["id"]: c for c in agent.status()["kernel_runner"]["children"]}
    assert (rows["service:web"]["state"], rows["service:web"]["extra"]["port"]) == ("STOPPED", port)
    assert agent.start_service(info("web", port)) == {"status": "started"}
    assert [(c.state, c.generation) for c in handle.which_children() if c.child_id == "service:web"] == [
        (ChildState.RUNNING, 1)], "a new start replaces the STOPPED row"


def test_status_shows_service_state_pid_and_restarts(services_runner: tuple[RunnerHandle, AgentClient]) -> None:
    _, agent = services_runner
    port = free_port()
    assert agent.start_service(info("web", port)) == {"status": "started"}

    def web_row() -> dict[str, Any] | None:
        # `status` is answered from the supervisor's last published snapshot, which may lag the service's own
        # `started` by one supervisor turn under load (docs/architecture.md §5.5).
        row = {c["id"]: c for c in agent.status()["kernel_runner"]["children"]}.get("service:web")
        return row if row is not None and row["state"] != "STARTING" else None

    web = wait_until(web_row, timeout=30, what="the web row past STARTING")
    assert web is not None
    assert web["state"] == "RUNNING" and isinstance(web["pid"], int) and web["restarts"] == 0
    assert web["extra"] == {"name": "web", "port": port}
    assert web["uptime_s"] is not None and web["uptime_s"] >= 0


def test_legacy_service_for_the_language_when_no_definition_matches(runner_config: RunnerConfig) -> None:
    # A `python` runner has legacy services (docs/protocol.md §6.9); with no definitions at all get-apps is still [] (no parser).
    config = attrs.evolve(runner_config, lang="python")
    handle = start(config)
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            assert agent.get_apps() == {"status": "done", "data": []}
            result = agent.start_service(info("no-such-legacy", free_port()))
            assert result == {"status": "failed", "error": "unsupported service"}
    finally:
        handle.stop(timeout=5)
