"""`kernel-runner client` as ops call it (a real subprocess) against a real runner: options in any position, exit
codes that say whether the op worked, one-line errors, and a hint when no runner answers (issue 11, point 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.cli.client import build_parser, run_exit_code
from kernel_runner.client import AgentClient, RunResult, StatusReply
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.waiting import wait_until

CLIENT = (sys.executable, "-m", "kernel_runner", "client")


def client(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLIENT, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def served(runner_config: RunnerConfig, tmp_path: Path) -> Iterator[RunnerHandle]:
    """A runner with two service definitions: `web` listens on its port, `broken` exits before opening it."""
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "web.json").write_text(json.dumps({"command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"]}))
    (defs / "broken.json").write_text(json.dumps({"command": [sys.executable, str(CHILDREN / "fail_fast.py"), "3"]}))
    handle = start(attrs.evolve(runner_config, service_defs_dir=defs))
    yield handle
    handle.stop(timeout=5)


def ports_of(handle: RunnerHandle) -> tuple[str, str, str, str]:
    return ("--port-in", str(handle.ports.port_in), "--port-out", str(handle.ports.port_out))


def test_help_says_it_is_a_test_tool_that_takes_the_agents_messages() -> None:
    done = client("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "test and debugging tool" in text and "round-robin" in text and "do not use it next to a live agent" in text


def test_options_go_before_or_after_the_command(served: RunnerHandle) -> None:
    before = client(*ports_of(served), "--timeout", "30", "status")
    after = client("status", *ports_of(served), "--timeout", "30")
    assert (before.returncode, after.returncode) == (0, 0), (before.stderr, after.stderr)
    assert '"started_at"' in before.stdout and '"started_at"' in after.stdout


def test_an_option_before_the_command_is_not_reset_by_the_commands_defaults() -> None:
    parsed = build_parser().parse_args(["--port-in", "2100", "--timeout", "4", "start-service", "jupyter", "--port",
                                        "8080"])
    assert (parsed.port_in, parsed.port_out, parsed.timeout, parsed.name, parsed.port) == (2100, 2001, 4.0,
                                                                                            "jupyter", 8080)
    parsed = build_parser().parse_args(["exec", "--port-out", "2101", "echo hi"])
    assert (parsed.port_in, parsed.port_out, parsed.text) == (2000, 2101, "echo hi")


def test_abbreviated_options_are_refused() -> None:
    done = client("--port", "2000", "status", "--timeout", "1")
    assert done.returncode == 2
    assert "ambiguous" not in done.stderr and "Traceback" not in done.stderr


def test_readme_start_service_form_works_and_failed_exits_one(served: RunnerHandle) -> None:
    # The README's `kernel-runner client start-service jupyter --port 8080`, with a definition this test owns.
    started = client("start-service", "web", "--port", str(free_port()), "--protocol", "tcp", *ports_of(served))
    assert (started.returncode, started.stdout.strip()) == (0, '{"status": "started"}'), started.stderr
    failed = client("start-service", "broken", "--port", str(free_port()), "--protocol", "tcp", *ports_of(served))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert '"status": "failed"' in failed.stdout


def test_exec_exits_with_the_runs_exit_code(served: RunnerHandle) -> None:
    ok = client("exec", "echo hi", *ports_of(served))
    assert (ok.returncode, ok.stdout) == (0, "hi\n")
    assert client("exec", "exit 7", *ports_of(served)).returncode == 7


def test_batch_exits_with_the_first_step_that_ended_non_zero(served: RunnerHandle) -> None:
    done = client("batch", "--build", "true", "--exec", "exit 5", *ports_of(served))
    assert done.returncode == 5, done.stderr
    assert client("batch", "--build", "true", "--exec", "true", *ports_of(served)).returncode == 0


@pytest.mark.parametrize(("exit_code", "status"), [(0, 0), (7, 7), (255, 255), (256, 255), (-1, 255), (None, 1)])
def test_a_runs_exit_code_becomes_a_process_status(exit_code: int | None, status: int) -> None:
    result = RunResult(status="finished" if exit_code is not None else "waiting-input", exit_code=exit_code, records=())
    assert run_exit_code(result) == status


@pytest.mark.parametrize(("args", "message"), [
    (("start-model-service", "notjson"), "error: the model entry is not JSON: "),
    (("start-model-service", "[1]"), "error: the model entry must be a JSON object, got list"),
    (("start-service", "web", "--port", "8080", "--options", "{oops"), "error: --options is not JSON: "),
])
def test_a_bad_json_argument_is_one_line_and_exit_two(args: tuple[str, ...], message: str) -> None:
    done = client(*args, "--port-in", str(free_port()), "--timeout", "1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


@pytest.mark.parametrize("args", [("status",), ("interrupt",), ("input", "yes"), ("shutdown-service", "web")])
def test_no_runner_answering_is_named_with_exit_three(args: tuple[str, ...]) -> None:
    port_in, port_out = free_port(), free_port()
    done = client(*args, "--port-in", str(port_in), "--port-out", str(port_out), "--timeout", "1")
    assert done.returncode == 3
    assert done.stderr == (f"kernel-runner client: no runner answering on tcp://127.0.0.1:{port_in} "
                           "(is it running? --port-in/--port-out)\n")


def test_ops_without_a_reply_succeed_when_a_runner_is_there(served: RunnerHandle) -> None:
    for args in (("interrupt",), ("input", "yes"), ("shutdown-service", "nothing")):
        done = client(*args, *ports_of(served))
        assert done.returncode == 0, (args, done.stderr)


def test_a_slow_run_is_not_mistaken_for_a_missing_runner(served: RunnerHandle) -> None:
    done = client("exec", "sleep 30", *ports_of(served), "--timeout", "1")
    assert done.returncode == 3
    assert "no runner answering" not in done.stderr and "no end of the run within 1.0s" in done.stderr


def test_status_reply_is_typed(agent: AgentClient) -> None:
    def router_running() -> StatusReply | None:
        # The tree in `status` is the supervisor's last snapshot: right after start-up it may still show the router
        # STARTING while the router already answers.
        candidate = agent.status_reply(timeout=30)
        row = candidate.child("router")
        return candidate if row is not None and row.state == "RUNNING" else None

    reply = wait_until(router_running, timeout=30, what="the router RUNNING in status")
    assert reply is not None and reply.ready is True and isinstance(reply.started_at, float)
    router = reply.child("router")
    assert router is not None and router.restarts == 0
    assert reply.body["kernel_runner"]["ready"] is True  # the whole map stays at hand


def test_status_reply_of_a_runner_without_the_tree() -> None:
    body: dict[str, Any] = {"started_at": 12.5}  # what upstream's runner sends
    reply = StatusReply.from_body(body)
    assert (reply.started_at, reply.ready, reply.children, reply.child("router")) == (12.5, None, (), None)
