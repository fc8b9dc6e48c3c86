"""The trust model of docs/protocol.md §2.8 through the wire: what a model's definition (the user's) may touch, what an
image's service definition may, and exactly which environment their processes get. Real runner, real processes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import AgentClient
from tests.conftest import CHILDREN, MODEL_DIR
from tests.support.ports import free_port
from tests.support.waiting import wait_until

LISTENER = str(CHILDREN / "listener.py")
# Listens on argv[1] and ignores every other argument, so a test can look at the argv it was given.
ARGV_LISTENER = ("import socket, sys; server = socket.create_server(('127.0.0.1', int(sys.argv[1]))); "
                 "[server.accept()[0].close() for _ in iter(int, 1)]")


@pytest.fixture
def confined_runner(runner_config: RunnerConfig, tmp_path: Path) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    (runner_config.config_dir / "environ.txt").write_text(
        "LD_LIBRARY_PATH=/opt/backend.ai/lib:/usr/local/lib\nKR_FROM_ENVIRON_TXT=yes\n")
    defs = runner_config.service_defs_dir
    defs.mkdir()
    (defs / "echo.json").write_text(json.dumps({
        "command": [sys.executable, "-c", ARGV_LISTENER, "{ports[0]}"],
        "allowed_arguments": ["--label"],
        "allowed_envs": ["KR_USER_VALUE"],
        "env": {"KR_DEFINITION_{ports[0]}": "v{ports[0]}"},
        # The image may write outside the work dir: it is trusted (docs/protocol.md §2.8).
        "prestart_actions": [{"action": "write_file", "args": {"filename": str(tmp_path / "by-the-image.txt"),
                                                              "body": ["ok"]}}],
    }))
    outside = tmp_path / "outside"
    outside.mkdir()
    (runner_config.work_dir / "out-link").symlink_to(outside)
    (runner_config.work_dir / "inner").mkdir()
    (runner_config.work_dir / "in-link").symlink_to(runner_config.work_dir / "inner")
    handle = start(attrs.evolve(runner_config, lang="python"))
    with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
        yield handle, agent
    handle.stop(timeout=5)


def model(port: int, *actions: dict[str, Any], command: list[str] | None = None) -> dict[str, Any]:
    return {"name": "m", "model_path": MODEL_DIR, "service": {
        "start_command": command or [sys.executable, LISTENER, str(port)],
        "port": port,
        "pre_start_actions": list(actions),
    }}


def pid_of(handle: RunnerHandle, child_id: str) -> int:
    found = wait_until(lambda: next((c.pid for c in handle.which_children() if c.child_id == child_id and c.pid), None),
                       timeout=10, what=f"{child_id} with a pid")
    assert isinstance(found, int)
    return found


ESCAPES = [
    ({"action": "write_file", "args": {"filename": "../outside/x.txt", "body": ["x"]}}, "leads outside the work dir"),
    ({"action": "write_file", "args": {"filename": "inner/../../outside/x.txt", "body": ["x"]}},
     "leads outside the work dir"),
    ({"action": "write_file", "args": {"filename": "out-link/x.txt", "body": ["x"]}}, "leads outside the work dir"),
    ({"action": "mkdir", "args": {"path": "out-link/made"}}, "leads outside the work dir"),
    ({"action": "mkdir", "args": {"path": "../outside/made"}}, "leads outside the work dir"),
    ({"action": "write_file", "args": {"filename": "/tmp/kernel-runner-model-escape.txt", "body": ["x"]}},
     "is absolute"),
    ({"action": "mkdir", "args": {"path": "/tmp/kernel-runner-model-escape"}}, "is absolute"),
    ({"action": "write_file", "args": {"filename": "x.txt", "body": ["x"], "mode": "4755"}},
     "more than permission bits"),
]


@pytest.mark.parametrize(("action", "says"), ESCAPES)
def test_a_models_pre_start_actions_cannot_leave_the_work_dir(confined_runner: tuple[RunnerHandle, AgentClient],
                                                              tmp_path: Path, action: dict[str, Any],
                                                              says: str) -> None:
    _, agent = confined_runner
    reply = agent.start_model_service(model(free_port(), action), timeout=15)
    assert reply["status"] == "failed"
    assert reply["error"].startswith(f"prestart action #0 ({action['action']}) failed: ") and says in reply["error"]
    assert list((tmp_path / "outside").iterdir()) == []
    assert not Path("/tmp/kernel-runner-model-escape.txt").exists()
    assert not Path("/tmp/kernel-runner-model-escape").exists()
    assert "started_at" in agent.status()


def test_a_models_files_inside_the_work_dir_are_written(confined_runner: tuple[RunnerHandle, AgentClient],
                                                       work_dir: Path) -> None:
    _, agent = confined_runner
    port = free_port()
    reply = agent.start_model_service(model(
        port,
        {"action": "mkdir", "args": {"path": "models/cache"}},
        {"action": "write_file", "args": {"filename": "in-link/port.txt", "body": ["{ports[0]}"]}},
    ), timeout=15)
    assert reply == {"status": "started"}
    assert (work_dir / "models" / "cache").is_dir()
    assert (work_dir / "inner" / "port.txt").read_text() == f"{port}\n"


def test_a_model_server_gets_exactly_the_child_env(confined_runner: tuple[RunnerHandle, AgentClient],
                                                   work_dir: Path) -> None:
    handle, agent = confined_runner
    port = free_port()
    assert agent.start_model_service(model(port), timeout=15) == {"status": "started"}
    environ = psutil.Process(pid_of(handle, f"service:m-{port}")).environ()
    # docs/protocol.md §1.4 table: the child env, with the runner's own libraries taken off LD_LIBRARY_PATH.
    expected = {**handle.runner.env, "LD_LIBRARY_PATH": "/usr/local/lib"}
    assert environ == expected
    listed = {key: environ[key] for key in ("LANG", "HOME", "TERM", "LD_LIBRARY_PATH", "KR_FROM_ENVIRON_TXT")}
    assert listed == {"LANG": "C.UTF-8", "HOME": str(work_dir), "TERM": "xterm", "LD_LIBRARY_PATH": "/usr/local/lib",
                      "KR_FROM_ENVIRON_TXT": "yes"}
    assert environ["PATH"].split(":")[0] == f"{work_dir}/.local/bin"


def test_a_service_gets_the_child_env_its_definition_env_and_the_users_env(
        confined_runner: tuple[RunnerHandle, AgentClient], tmp_path: Path) -> None:
    handle, agent = confined_runner
    port = free_port()
    request = {"name": "echo", "port": port, "ports": [port], "protocol": "http",
               "options": {"arguments": {"--label": "{ports.__class__}"}, "envs": {"KR_USER_VALUE": "{runtime_path}"}}}
    assert agent.start_service(request) == {"status": "started"}
    process = psutil.Process(pid_of(handle, "service:echo"))
    expected = {**handle.runner.env, "LD_LIBRARY_PATH": "/usr/local/lib", f"KR_DEFINITION_{port}": f"v{port}",
                "KR_USER_VALUE": "{runtime_path}"}
    assert process.environ() == expected
    # What the user sends is never a template: it reaches the process as it was sent.
    assert process.cmdline()[-3:] == [str(port), "--label", "{ports.__class__}"]
    assert (tmp_path / "by-the-image.txt").read_text() == "ok\n"


def test_a_users_env_sets_only_what_the_image_allows(confined_runner: tuple[RunnerHandle, AgentClient]) -> None:
    _, agent = confined_runner
    request = {"name": "echo", "port": free_port(), "options": {"envs": {"PATH": "/evil"}}}
    assert agent.start_service(request) == {
        "status": "failed", "error": "DisallowedEnvironment('Environment variable PATH not allowed for service echo')"}
