"""Embedding the runner in another program (issue 11 point 8): `kernel_runner.run`, the handle as a context manager,
`wait_ready`, `RunnerConfig.for_embedding`, reloading service definitions, and the `kernel_runner.testing` plugin."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pykka
import pytest

import kernel_runner
from kernel_runner import RunnerConfig
from kernel_runner.ids import KERNEL_CHILD
from kernel_runner.supervision import ChildState
from tests.conftest import CHILDREN
from tests.support.ports import port_is_free
from tests.support.procs import descendants

READY_S = 60.0
pytest_plugins = ["pytester"]


def listener() -> dict[str, object]:
    return {"command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"]}


def test_for_embedding_keeps_everything_in_one_temp_folder() -> None:
    config = RunnerConfig.for_embedding("app")
    root = config.temp_root
    assert root is not None and root.is_dir()
    for path in (config.work_dir, config.config_dir, config.service_defs_dir, config.user_input_socket):
        assert path.is_relative_to(root), path
    assert (config.work_dir.is_dir(), config.config_dir.is_dir(), config.service_defs_dir.is_dir()) == (True,) * 3
    assert (config.bind, config.port_in, config.port_out, config.start_intrinsic_services) == ("127.0.0.1", 0, 0, False)
    with kernel_runner.run(config, stop_timeout=10):
        pass
    assert not root.exists()


def test_an_overridden_folder_is_used_as_it_is_and_kept(tmp_path: Path) -> None:
    config = RunnerConfig.for_embedding("app", work_dir=tmp_path, shutdown_deadline_s=5.0)
    assert config.temp_root is not None and config.work_dir == tmp_path
    assert not (config.temp_root / "work").exists()
    with kernel_runner.run(config) as handle, kernel_runner.AgentClient(
        port_in=handle.ports.port_in, port_out=handle.ports.port_out
    ) as agent:
        assert handle.wait_ready(READY_S)
        assert agent.run("exec", "pwd > here.txt", timeout=30).exit_code == 0
    assert (tmp_path / "here.txt").read_text().strip() == str(tmp_path)
    assert not config.temp_root.exists()


def test_run_stops_the_whole_tree_and_its_processes_on_exit() -> None:
    config = RunnerConfig.for_embedding("app", shutdown_deadline_s=5.0)
    (config.service_defs_dir / "web.json").write_text(json.dumps(listener()))
    with kernel_runner.run(config) as handle, kernel_runner.AgentClient(
        port_in=handle.ports.port_in, port_out=handle.ports.port_out
    ) as agent:
        assert handle.wait_ready(READY_S)
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            port = spare.getsockname()[1]
        reply = agent.start_service({"name": "web", "port": port, "ports": [port], "protocol": "tcp", "options": {}},
                                    timeout=20)
        assert reply == {"status": "started"}
        below = descendants(os.getpid())
        assert below, "the service runs below this process"
        ports = handle.ports.port_in, handle.ports.port_out
    assert pykka.ActorRegistry.get_all() == []
    assert not any(proc.is_running() and proc.status() != "zombie" for proc in below)
    assert all(port_is_free(port) for port in ports)
    assert config.temp_root is not None and not config.temp_root.exists()


def test_run_stops_the_tree_when_the_block_raises() -> None:
    config = RunnerConfig.for_embedding("app", shutdown_deadline_s=5.0)
    with pytest.raises(KeyError), kernel_runner.run(config):
        raise KeyError("boom")
    assert pykka.ActorRegistry.get_all() == []
    assert config.temp_root is not None and not config.temp_root.exists()


def test_the_handle_itself_is_a_context_manager() -> None:
    config = RunnerConfig.for_embedding("app", shutdown_deadline_s=5.0)
    with kernel_runner.start(config) as handle:
        assert handle.wait_ready(READY_S)
        assert pykka.ActorRegistry.get_all()
    assert pykka.ActorRegistry.get_all() == []


def test_wait_ready_with_the_kernel_means_code_runs_at_once() -> None:
    config = RunnerConfig.for_embedding("python", runtime_path=sys.executable, shutdown_deadline_s=10.0)
    with kernel_runner.run(config) as handle, kernel_runner.AgentClient(
        port_in=handle.ports.port_in, port_out=handle.ports.port_out
    ) as agent:
        assert handle.wait_ready(READY_S, kernel=True)
        kernel = handle.board.snapshot.get(KERNEL_CHILD)
        assert kernel is not None and kernel.state is ChildState.RUNNING
        result = agent.code("print(6 * 7)", timeout=60)
        assert (result.status, result.stdout) == ("finished", b"42\n")


def test_reload_from_the_handle_applies_to_the_next_start() -> None:
    config = RunnerConfig.for_embedding("app", shutdown_deadline_s=5.0)
    with kernel_runner.run(config) as handle, kernel_runner.AgentClient(
        port_in=handle.ports.port_in, port_out=handle.ports.port_out
    ) as agent:
        assert agent.get_apps(timeout=20)["data"] == []
        (config.service_defs_dir / "web.json").write_text(json.dumps(listener()))
        (config.service_defs_dir / "bad.json").write_text("{")
        summary = handle.reload_service_definitions(timeout=30)
        assert summary is not None
        assert (summary.loaded, summary.added, summary.removed, summary.invalid) == (1, ("web",), (), ("bad",))
        assert [app["name"] for app in agent.get_apps(timeout=20)["data"]] == ["web"]


def test_configure_logging_names_each_child(tmp_path: Path) -> None:
    script = (
        "import kernel_runner\n"
        "kernel_runner.configure_logging(debug=False, json_lines=False)\n"
        "with kernel_runner.run(kernel_runner.RunnerConfig.for_embedding('app', shutdown_deadline_s=5.0)) as h:\n"
        "    assert h.wait_ready(60)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[router]" in done.stderr and "[startup]" in done.stderr, done.stderr[-3000:]


def test_the_testing_plugin_gives_a_test_a_runner_and_a_client(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["kernel_runner.testing"]\n')
    pytester.makepyfile(
        """
        def test_exec(agent_client, kernel_runner):
            result = agent_client.run("exec", "echo hi; pwd", timeout=30)
            assert result.stdout.decode().split() == ["hi", str(kernel_runner.config.work_dir)]
            assert kernel_runner.config.bind == "127.0.0.1"

        def test_status(agent_client):
            assert agent_client.status_reply(timeout=30).ready is True
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=2)
