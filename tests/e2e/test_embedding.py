"""Embedding the runner in another program (issue 11 point 8): `kernel_runner.run`, the handle as a context manager,
`wait_ready`, `RunnerConfig.for_embedding`, reloading service definitions, and the `kernel_runner.testing` plugin."""

from __future__ import annotations

import configparser
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
from kernel_runner.supervision.spec import ChildState
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


QUIET_HOST = """
import sys
import kernel_runner

for debug in (False, True):
    config = kernel_runner.RunnerConfig.for_embedding("app", debug=debug, shutdown_deadline_s=5.0)
    with kernel_runner.run(config) as handle:
        assert handle.wait_ready(60)
        with kernel_runner.AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            assert agent.exec("echo to-the-agent", timeout=30).stdout == b"to-the-agent\\n"
            assert agent.start_service({"name": "nope", "port": 1, "ports": [1]}, timeout=30)["status"] == "failed"
    print(f"== the runner with debug={debug} stopped", file=sys.stderr, flush=True)
"""


def test_an_embedded_runner_writes_nothing_to_stdout_and_no_debug_lines_unless_asked() -> None:
    """A host that never configured loguru keeps loguru's own handler: DEBUG and up, on stderr."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOGURU_")}
    done = subprocess.run([sys.executable, "-c", QUIET_HOST], capture_output=True, text=True, timeout=120, check=False,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""  # no `binding to` lines, nothing else: stdout is the host's
    quiet, _, rest = done.stderr.partition("== the runner with debug=False stopped")
    debugged, marker, _ = rest.partition("== the runner with debug=True stopped")
    assert marker, done.stderr[-3000:]
    assert "| INFO " in quiet and "| DEBUG " not in quiet, quiet[-3000:]  # INFO and up reach the host's handlers
    assert "| DEBUG " in debugged  # RunnerConfig(debug=True) asks for them


def test_the_handle_and_its_parts_print_readably() -> None:
    config = RunnerConfig.for_embedding("app", shutdown_deadline_s=5.0, metrics_port=0)
    with kernel_runner.run(config) as handle:
        assert handle.wait_ready(READY_S)
        ports = f"BoundPorts(port_in={handle.ports.port_in}, port_out={handle.ports.port_out})"
        assert repr(handle.ports) == ports
        assert repr(handle) == f"RunnerHandle(lang='app', bind='127.0.0.1', ports={ports}, state='ready')"
        assert repr(handle.metrics) == f"RunnerMetrics(port={handle.metrics.port if handle.metrics else None})"
        assert repr(handle.router_link).startswith("RouterLink(pending=")
        assert repr(handle.log_book).startswith("ChildLogBook(children=")
    assert repr(handle).endswith("state='stopped')")


def test_the_agent_client_has_a_helper_for_each_batch_op() -> None:
    config = RunnerConfig.for_embedding("app", shutdown_deadline_s=5.0)
    with kernel_runner.run(config) as handle, kernel_runner.AgentClient(
        port_in=handle.ports.port_in, port_out=handle.ports.port_out
    ) as agent:
        cleaned = agent.clean("rm -f made.txt", timeout=30)
        built = agent.build("echo built > made.txt; exit 3", timeout=30)
        skipped = agent.exec("cat made.txt", timeout=30)  # after a failed build (docs/protocol.md §5.2)
        ran = agent.exec("cat made.txt", timeout=30)
    assert (cleaned.status, cleaned.exit_code) == ("clean-finished", 0)
    assert (built.status, built.exit_code) == ("build-finished", 3)
    assert (skipped.status, skipped.exit_code, skipped.stdout) == ("finished", 127, b"")
    assert (ran.status, ran.exit_code, ran.stdout) == ("finished", 0, b"built\n")


def test_the_testing_extra_brings_what_the_fixtures_import() -> None:
    setup = configparser.ConfigParser()
    setup.read(Path(kernel_runner.__file__).parent.parent / "setup.cfg")
    extra = setup["options.extras_require"]["testing"].split()
    assert [requirement for requirement in extra if requirement.startswith("pytest")] == ["pytest>=8"]
    # Without pytest, importing the fixtures says which extra to install.
    probe = "import sys\nsys.modules['pytest'] = None\nimport kernel_runner.testing\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "kernel_runner.testing needs pytest: pip install 'kernel-runner[testing]'" in done.stderr


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
