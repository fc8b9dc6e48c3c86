"""The 24.12 command language through the wire (docs/protocol.md §6.3, §6.4, §7.1): string commands, `shell`,
`${{ expr }}` and shell variables, with real definition files, real shells and real listening processes."""

from __future__ import annotations

import json
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import AgentClient
from kernel_runner.supervision.spec import ChildState
from tests.conftest import CHILDREN, MODEL_DIR
from tests.support.ports import free_port
from tests.support.waiting import wait_until

PYTHON = shlex.quote(sys.executable)
LISTENER = shlex.quote(str(CHILDREN / "listener.py"))
SERVER = str(CHILDREN / "health_server.py")

DEFINITIONS: dict[str, Any] = {
    # Default shell (bash): `$HOME` is the shell's, `${{ ports[0] }}` and `{runtime_path}`-style placeholders the runner's.
    "shelled": {
        "command": f'echo "home=$HOME port=${{{{ ports[0] }}}}" > "$HOME/started.txt" && exec {PYTHON} {LISTENER} '
                   "${{ ports[0] }}",
    },
    # No shell: split into words, run directly.
    "split": {"command": f"{PYTHON} {LISTENER} '{{ports[0]}}' --delay 0", "shell": None},
    "badshell": {"command": "serve", "shell": 5},
}


@pytest.fixture
def runner(runner_config: RunnerConfig) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    folder = runner_config.service_defs_dir
    folder.mkdir(parents=True)
    for name, body in DEFINITIONS.items():
        (folder / f"{name}.json").write_text(json.dumps(body))
    handle = start(runner_config)
    with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
        yield handle, agent
    handle.stop(timeout=5)


def request(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "ports": [port], "protocol": "http", "options": {}}


def service_pid(handle: RunnerHandle, child_id: str) -> int:
    def pid() -> int | None:
        child = next((c for c in handle.which_children() if c.child_id == child_id), None)
        return child.pid if child is not None and child.state is ChildState.RUNNING else None

    found = wait_until(pid, timeout=30, what=f"{child_id} running with a pid")
    assert found is not None
    return found


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return conn.makefile("rb").readline()


def test_a_string_command_runs_in_bash_with_placeholders_and_shell_variables(
    runner: tuple[RunnerHandle, AgentClient], work_dir: Path
) -> None:
    handle, agent = runner
    port = free_port()
    assert agent.start_service(request("shelled", port), timeout=30) == {"status": "started"}
    assert greeting(port) == b"hello\n"
    # The shell expanded $HOME (the work dir, docs/protocol.md §1.4) and the runner the port, before `exec`.
    assert (work_dir / "started.txt").read_text() == f"home={work_dir} port={port}\n"
    assert psutil.Process(service_pid(handle, "service:shelled")).cmdline() == [
        sys.executable, str(CHILDREN / "listener.py"), str(port)]


def test_a_string_command_without_a_shell_is_split_into_words(runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, agent = runner
    port = free_port()
    assert agent.start_service(request("split", port), timeout=30) == {"status": "started"}
    assert greeting(port) == b"hello\n"
    assert psutil.Process(service_pid(handle, "service:split")).cmdline() == [
        sys.executable, str(CHILDREN / "listener.py"), str(port), "--delay", "0"]


def test_a_definition_with_a_bad_shell_is_skipped_naming_file_and_field(
    runner_config: RunnerConfig, log_lines: list[str]
) -> None:
    folder = runner_config.service_defs_dir
    folder.mkdir(parents=True)
    (folder / "badshell.json").write_text(json.dumps(DEFINITIONS["badshell"]))
    handle = start(runner_config)
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            expected = f"service definition skipped: {folder / 'badshell.json'}: expected a string or null, got a " \
                       "number @ $.shell"
            wait_until(lambda: any(expected in line for line in log_lines), timeout=10, what="the skipped line")
            reply = agent.start_service(request("badshell", free_port()))
            assert reply["status"] == "failed" and "badshell.json" in reply["error"] and "@ $.shell" in reply["error"]
    finally:
        handle.stop(timeout=5)


def model(name: str, port: int, command: str, *, model_path: Path | None = None, **service: Any) -> dict[str, Any]:
    return {"name": name, "model_path": str(model_path or MODEL_DIR),
            "service": {"start_command": command, "port": port, "pre_start_actions": None, **service}}


def test_a_model_string_command_with_shell_null_runs_its_words_directly(
    runner: tuple[RunnerHandle, AgentClient]
) -> None:
    handle, agent = runner
    port = free_port()
    # Backend.AI 26.8's form: shell null, so no shell runs; the quoted path stays one word.
    command = f"{PYTHON} {shlex.quote(SERVER)} ${{{{ ports[0] }}}} --path '/v2/health ready' --ok-status 200"
    reply = agent.start_model_service(model("llama", port, command, shell=None), timeout=60)
    assert reply == {"status": "started"}
    assert psutil.Process(service_pid(handle, f"service:llama-{port}")).cmdline() == [
        sys.executable, SERVER, str(port), "--path", "/v2/health ready", "--ok-status", "200"]


def test_a_model_string_command_runs_in_its_shell_with_placeholders(
    runner: tuple[RunnerHandle, AgentClient], work_dir: Path
) -> None:
    handle, agent = runner
    port = free_port()
    command = f'echo "$HOME {{ports[0]}}" > model.txt && exec {PYTHON} {shlex.quote(SERVER)} ${{{{ ports[0] }}}}'
    body = model("mistral", port, command, model_path=work_dir)
    assert agent.start_model_service(body, timeout=60) == {"status": "started"}  # spawned: the shell may still run
    written = work_dir / "model.txt"
    wait_until(lambda: written.is_file() and written.read_text().endswith("\n"), timeout=30, what="model.txt")
    assert written.read_text() == f"{work_dir} {port}\n"
    pid = service_pid(handle, f"service:mistral-{port}")
    wanted = [sys.executable, SERVER, str(port)]  # the shell exec'd the server: the same process
    wait_until(lambda: psutil.Process(pid).cmdline() == wanted, timeout=30, what="the shell replaced by the server")


def test_a_model_with_a_bad_shell_gets_failed_naming_the_field(runner: tuple[RunnerHandle, AgentClient]) -> None:
    _, agent = runner
    reply = agent.start_model_service(model("bad", free_port(), "serve", shell=7), timeout=30)
    assert reply["status"] == "failed"
    assert reply["error"].endswith("@ $.service.shell")
