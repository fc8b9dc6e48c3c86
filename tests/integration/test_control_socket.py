"""The control socket (docs/operations.md §1) against a real in-process runner: every command through the real unix
socket, real services from service definitions, bad requests, the socket file's life."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import kernel_runner
from kernel_runner import RunnerConfig, RunnerHandle, RunnerStartError, start
from kernel_runner.client import AgentClient, ReplyTimeout
from kernel_runner.control.client import ControlClient, ControlError
from kernel_runner.control.protocol import MAX_REQUEST_BYTES, default_socket_path
from kernel_runner.control.server import MAX_CONNECTIONS
from kernel_runner.supervision.spec import ChildState
from tests.conftest import CHILDREN, MODEL_DIR
from tests.integration.test_services import write_defs
from tests.support.ports import free_port
from tests.support.procs import alive
from tests.support.runners import running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)

READY_S = 30.0
LISTENER = [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"]
DEFINITIONS = {
    "web": {"command": LISTENER},
    # Exits a second after its port opened, then waits a minute before its next start: BACKOFF for a while.
    "flaky": {"command": [*LISTENER, "--exit-after", "1.0"],
              "restart": {"backoff_initial_s": 60, "backoff_cap_s": 60}},
    # Gives up (FATAL) the first time it exits.
    "doomed": {"command": [*LISTENER, "--exit-after", "1.5"], "restart": {"max_restarts": 0}},
}


@pytest.fixture
def control_dir() -> Iterator[Path]:
    """A short folder for the socket: pytest's tmp_path can pass the 107 bytes a unix socket path may have."""
    folder = Path(tempfile.mkdtemp(prefix="krctl-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ctl_config(runner_config: RunnerConfig, control_dir: Path) -> RunnerConfig:
    write_defs(runner_config.service_defs_dir, DEFINITIONS)
    return attrs.evolve(runner_config, control_socket=control_dir / "control.sock")


@pytest.fixture
def ctl_runner(ctl_config: RunnerConfig) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    with running(ctl_config) as (handle, agent):
        wait_until(lambda: ok(handle, "ready")["ready"], timeout=READY_S, what="the runner ready")
        yield handle, agent


def ask(handle: RunnerHandle, command: str, **args: Any) -> dict[str, Any]:
    """One request over a new connection to the runner's control socket."""
    assert handle.config.control_socket is not None
    with ControlClient(handle.config.control_socket, timeout=30) as client:
        return client.request(command, args)


def ok(handle: RunnerHandle, command: str, **args: Any) -> dict[str, Any]:
    reply = ask(handle, command, **args)
    assert reply["ok"] is True, reply
    return reply


def error(handle: RunnerHandle, command: str, **args: Any) -> str:
    reply = ask(handle, command, **args)
    assert reply["ok"] is False, reply
    text: str = reply["error"]
    return text


def child(handle: RunnerHandle, child_id: str) -> Any:
    return handle.board.snapshot.get(child_id)  # type: ignore[arg-type]


def start_web(handle: RunnerHandle, name: str = "web") -> dict[str, Any]:
    reply = ok(handle, "start", child=f"service:{name}", port=free_port(), timeout=20)
    assert (reply["action"], reply["state"], reply["generation"]) == ("started", "RUNNING", 1)
    return reply


def test_status_has_the_runner_fields_and_every_child(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    reply = ok(handle, "status")
    runner = reply["runner"]
    assert (runner["lang"], runner["pid"], runner["version"], runner["ready"]) == (
        "app", os.getpid(), kernel_runner.__version__, True)
    assert runner["ports"] == {"in": handle.ports.port_in, "out": handle.ports.port_out}
    rows = {row["id"]: row for row in reply["children"]}
    assert list(rows) == ["router", "lang", "services"]
    lang = rows["lang"]
    assert (lang["state"], lang["generation"], lang["restarts"], lang["last_exit"], lang["children"]) == (
        "RUNNING", 1, 0, None, [])
    assert lang["uptime_s"] >= 0 and lang["extra"]["lang"] == "app"
    since = datetime.datetime.fromisoformat(lang["since"])
    assert since.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - since).total_seconds()) < 3600


def test_a_health_checker_is_nested_under_its_server(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, agent = ctl_runner
    port = free_port()
    model = {"name": "m", "model_path": MODEL_DIR, "service": {
        "start_command": [sys.executable, str(CHILDREN / "health_server.py"), str(port)], "port": port,
        "health_check": {"path": "/health", "max_retries": 10, "max_wait_time": 5.0, "expected_status_code": 200}}}
    assert agent.start_model_service(model, timeout=30) == {"status": "started"}
    rows = {row["id"]: row for row in ok(handle, "status")["children"]}
    server = rows[f"service:m-{port}"]
    assert f"health:m-{port}" not in rows
    assert [nested["id"] for nested in server["children"]] == [f"health:m-{port}"]
    assert server["children"][0]["state"] == "RUNNING"
    # Stopped by hand, the checker stops with its server and stays nested under it; started again, with it.
    ok(handle, "stop", child=f"service:m-{port}", timeout=20)

    def stopped_server() -> dict[str, Any] | None:
        # `stop` answers once the server is stopped; its bound checker is stopped right after it (BindsTo).
        row = next(row for row in ok(handle, "status")["children"] if row["id"] == f"service:m-{port}")
        return row if all(r["state"] != "STOPPING" for r in (row, *row["children"])) else None

    server = wait_until(stopped_server, timeout=30, what="the server and its checker stopped")
    assert server is not None
    assert [(row["id"], row["state"]) for row in (server, *server["children"])] == [
        (f"service:m-{port}", "STOPPED"), (f"health:m-{port}", "STOPPED")]
    assert ok(handle, "start", child=f"service:m-{port}", timeout=20)["generation"] == 2
    wait_until(lambda: (checker := child(handle, f"health:m-{port}")).state is ChildState.RUNNING
               and checker.extra.get("health") == "healthy", timeout=30, what="the checker back, and healthy")


def test_status_shows_what_a_services_probes_say(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    write_defs(handle.config.service_defs_dir, {"probed": {"command": LISTENER, "probes": {
        "liveness": {"tcp": {}, "period_s": 0.1}}}})
    assert ok(handle, "reload")["added"] == ["probed"]
    ok(handle, "start", child="service:probed", port=free_port(), timeout=20)
    start_web(handle)
    rows = {row["id"]: row for row in ok(handle, "status")["children"]}
    assert rows["service:probed"]["health"] == "healthy" and rows["service:web"]["health"] is None
    # The last answer is in its extra once a probe has run.
    wait_until(lambda: next(r for r in ok(handle, "status")["children"] if r["id"] == "service:probed")
               ["extra"].get("last_probe", {}).get("probe") == "liveness", timeout=30, what="a liveness answer")


def test_restart_by_hand_runs_a_new_generation(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    first = start_web(handle)
    reply = ok(handle, "restart", child="service:web", timeout=20)
    assert (reply["action"], reply["state"], reply["generation"]) == ("restarted", "RUNNING", 2)
    assert reply["pid"] not in (None, first["pid"])
    wait_until(lambda: not alive(first["pid"]), timeout=10, what="the first incarnation's process gone")
    assert any("by hand (kernel-runner ctl)" in line
               for line in handle.log_book.tail("service:web", 100))
    # A core child is restarted the same way.
    assert ok(handle, "restart", child="lang", timeout=20)["generation"] == 2
    assert error(handle, "restart", child="nope").startswith("no child nope")


def test_start_a_defined_service_answers_here_and_not_to_the_agent(
    ctl_runner: tuple[RunnerHandle, AgentClient],
) -> None:
    handle, agent = ctl_runner
    started = start_web(handle)
    assert child(handle, "service:web").pid == started["pid"]
    with pytest.raises(ReplyTimeout):
        agent.recv(timeout=0.5)  # the agent never hears of an operator's start
    again = ok(handle, "start", child="service:web")
    assert (again["action"], again["generation"]) == ("already-started", 1)
    assert "unsupported service" in error(handle, "start", child="service:nope", port=free_port())
    assert error(handle, "start", child="nope").startswith("no child nope")


def test_start_of_a_service_that_never_ran_needs_a_port(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    assert error(handle, "start", child="service:web") == (
        "service:web is not in the tree, so there is no port of its last run to reuse: give it one "
        "(`kernel-runner ctl start service:web --port N`)")
    assert child(handle, "service:web") is None, "nothing was started"


def test_start_a_child_waiting_to_restart_starts_it_now(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    start_web(handle, "flaky")
    wait_until(lambda: child(handle, "service:flaky").state is ChildState.BACKOFF, timeout=20,
               what="flaky waiting a minute to restart")
    reply = ok(handle, "start", child="service:flaky", timeout=20)
    assert (reply["action"], reply["generation"]) == ("started", 2)


def test_start_a_child_that_gave_up_starts_it_afresh(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    start_web(handle, "doomed")
    wait_until(lambda: child(handle, "service:doomed").state is ChildState.FATAL, timeout=20, what="doomed gave up")
    reply = ok(handle, "start", child="service:doomed", timeout=20)
    assert (reply["action"], reply["state"], reply["generation"]) == ("started", "RUNNING", 2)


def test_stop_ends_a_service_for_good_and_refuses_the_core_children(
    ctl_runner: tuple[RunnerHandle, AgentClient],
) -> None:
    handle, _ = ctl_runner
    web = start_web(handle)
    for core in ("router", "lang", "services"):
        assert "is not stopped by hand" in error(handle, "stop", child=core)
        assert child(handle, core).state is ChildState.RUNNING
    assert ok(handle, "stop", child="service:web", timeout=20)["action"] == "stopped"
    assert child(handle, "service:web").state is ChildState.STOPPED
    wait_until(lambda: not alive(web["pid"]), timeout=10, what="the service's process gone")
    assert ok(handle, "stop", child="service:web")["action"] == "already-stopped"
    assert error(handle, "stop", child="nope").startswith("no child nope")


def test_a_stopped_service_keeps_its_row_and_starts_again_on_its_port(
    ctl_runner: tuple[RunnerHandle, AgentClient],
) -> None:
    handle, agent = ctl_runner
    web = start_web(handle)
    port = child(handle, "service:web").extra["port"]
    ok(handle, "stop", child="service:web", timeout=20)
    row = next(row for row in ok(handle, "status")["children"] if row["id"] == "service:web")
    assert (row["state"], row["pid"], row["uptime_s"], row["since"], row["generation"]) == ("STOPPED", None, None,
                                                                                          None, 1)
    assert row["last_exit"].startswith("shutdown") and row["extra"]["port"] == port
    # The agent's status shows the row too, in its usual shape (docs/protocol.md §9.1).
    agents_row = next(row for row in agent.status()["kernel_runner"]["children"] if row["id"] == "service:web")
    assert (agents_row["state"], agents_row["extra"]["port"]) == ("STOPPED", port)
    again = ok(handle, "start", child="service:web", timeout=20)
    assert (again["action"], again["state"], again["generation"]) == ("started", "RUNNING", 2)
    assert again["pid"] != web["pid"] and child(handle, "service:web").extra["port"] == port
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass  # the listener is back on the port of its last run
    # Another port starts it from its definition on that port, as a new service (generation 1).
    other = free_port()
    ok(handle, "stop", child="service:web", timeout=20)
    moved = ok(handle, "start", child="service:web", port=other, timeout=20)
    assert (moved["action"], moved["generation"]) == ("started", 1)
    assert child(handle, "service:web").extra["port"] == other
    # `restart` of a stopped service starts it, as supervisorctl's does.
    ok(handle, "stop", child="service:web", timeout=20)
    assert ok(handle, "restart", child="service:web", timeout=20)["action"] == "started"


def test_a_stop_is_logged_stopping_once(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    start_web(handle)
    ok(handle, "stop", child="service:web", timeout=20)
    messages = [line.split(maxsplit=3)[3] for line in handle.log_book.tail("service:web", 100)]
    assert [message for message in messages if message.startswith("stopping")] == [
        "stopping: stopped by hand (kernel-runner ctl)"]
    assert any(message.startswith("SIGTERM to group") for message in messages), "how it stops is still said"


def test_the_exit_after_a_restart_by_hand_says_so(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    start_web(handle)
    ok(handle, "restart", child="service:web", timeout=20)
    row = next(row for row in ok(handle, "status")["children"] if row["id"] == "service:web")
    assert row["last_exit"] == "restart requested: by hand (kernel-runner ctl)"
    exits = [line for line in handle.log_book.tail("service:web", 100) if " exited: " in line]
    assert len(exits) == 1 and "exited: restart requested: by hand (kernel-runner ctl)" in exits[0]


def test_status_of_named_children(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    reply = ok(handle, "status", children=["services", "nope", "lang"])
    assert [row["id"] for row in reply["children"]] == ["services", "lang"]
    assert reply["unknown"] == ["nope"]
    assert ok(handle, "status")["unknown"] == []
    assert '"children" must be a list' in error(handle, "status", children="lang")


def test_signal_goes_to_the_childs_process(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    web = start_web(handle)
    reply = ok(handle, "signal", child="service:web", signal="term")
    assert (reply["pid"], reply["signal"]) == (web["pid"], "SIGTERM")
    wait_until(lambda: (c := child(handle, "service:web")) is not None and c.generation == 2, timeout=20,
               what="the service restarted after its SIGTERM")
    assert str(int(signal.SIGTERM)) in (child(handle, "service:web").last_exit or "")
    assert "has no process" in error(handle, "signal", child="lang", signal="HUP")
    assert "unknown signal" in error(handle, "signal", child="service:web", signal="SIGNOPE")
    assert "no signal number" in error(handle, "signal", child="service:web", signal=4096)


def test_tail_shows_a_services_output_and_follow_streams_new_lines(
    ctl_runner: tuple[RunnerHandle, AgentClient],
) -> None:
    handle, _ = ctl_runner
    web = start_web(handle)
    starting = f"listener {web['pid']} starting"
    lines = wait_until(lambda: (found := ok(handle, "tail", child="service:web", lines=500)["lines"])
                       and any(starting in line for line in found) and found, timeout=10, what="the service's line")
    assert len(ok(handle, "tail", child="service:web", lines=1)["lines"]) == 1
    assert len(lines) > 1
    assert "no child nope" in error(handle, "tail", child="nope")
    assert handle.config.control_socket is not None
    with ControlClient(handle.config.control_socket, timeout=30) as follower:
        first = follower.request("tail", {"child": "service:web", "lines": 2, "follow": True})
        assert (first["ok"], first["following"], len(first["lines"])) == (True, True, 2)
        restarted = ok(handle, "restart", child="service:web", timeout=20)
        wanted = f"listener {restarted['pid']} starting"
        streamed: list[str] = []
        while not any(wanted in line for line in streamed):
            reply = follower.read_reply()  # bounded by the client's 30 s timeout
            assert reply["ok"] is True
            streamed.append(reply.get("line", ""))
        assert any("by hand (kernel-runner ctl)" in line for line in streamed)


def test_ready_flips_once_start_up_is_done(ctl_config: RunnerConfig) -> None:
    go = ctl_config.work_dir / "go"
    # Start-up waits for bootstrap.sh (docs/protocol.md §1.6); this one waits for a file, at most 60 s.
    (ctl_config.work_dir / "bootstrap.sh").write_text("i=0\nwhile [ ! -e go ] && [ $i -lt 1200 ]; do sleep 0.05; "
                                                      "i=$((i+1)); done\n")
    with running(ctl_config) as (handle, _):
        reply = ok(handle, "ready")
        assert reply["ready"] is False and any("start-up is not done" in why for why in reply["not_ready"])
        assert ok(handle, "status")["runner"]["ready"] is False
        go.touch()
        wait_until(lambda: ok(handle, "ready")["ready"], timeout=30, what="ready once bootstrap.sh ended")
        assert ok(handle, "ready")["not_ready"] == []


def test_reload_rereads_the_definitions(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    write_defs(handle.config.service_defs_dir, {"extra": {"command": LISTENER}})
    reply = ok(handle, "reload", timeout=20)
    assert (reply["loaded"], reply["added"], reply["removed"], reply["invalid"]) == (len(DEFINITIONS) + 1, ["extra"], [], [])
    assert reply["problems"] == []
    assert start_web(handle, "extra")["state"] == "RUNNING"


def test_reload_names_each_invalid_definition_and_its_field(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    write_defs(handle.config.service_defs_dir, {"broken": {"command": 5}})
    reply = ok(handle, "reload", timeout=20)
    assert reply["invalid"] == ["broken"]
    [problem] = reply["problems"]
    assert problem.startswith(f"{handle.config.service_defs_dir / 'broken.json'}: ")
    assert problem.endswith("got a number @ $.command"), "the file, and the field at fault"


def test_version(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    reply = ok(handle, "version")
    assert (reply["version"], reply["lang"], reply["pid"]) == (kernel_runner.__version__, "app", os.getpid())


def raw_exchange(conn: socket.socket, line: bytes) -> dict[str, Any]:
    conn.sendall(line)
    reply: dict[str, Any] = json.loads(conn.makefile("rb").readline())
    return reply


def test_bad_requests_get_error_replies_and_the_server_keeps_serving(
    ctl_runner: tuple[RunnerHandle, AgentClient],
) -> None:
    handle, _ = ctl_runner
    path = str(handle.config.control_socket)
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(path)
        cases = [
            (b"not json\n", "not JSON"),
            (b"[1, 2]\n", "must be a JSON object"),
            (b'{"args": {}}\n', 'no "cmd"'),
            (b'{"cmd": "status", "args": [1]}\n', '"args" must be a JSON object'),
            (b'{"cmd": "launch"}\n', "unknown command 'launch'"),
            (b'{"cmd": "restart", "args": {}}\n', '"child" must be'),
            (b'{"cmd": "restart", "args": {"child": "lang", "timeout": -1}}\n', "timeout must be"),
            (b'{"cmd": "tail", "args": {"child": "lang", "lines": "many"}}\n', "lines must be"),
            (b"\xff\xfe\n", "not JSON"),
        ]
        for line, expected in cases:
            reply = raw_exchange(conn, line)
            assert reply["ok"] is False and expected in reply["error"], (line, reply)
        assert raw_exchange(conn, b'{"cmd": "status"}\n')["ok"] is True  # the same connection still serves
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(path)
        conn.sendall(b"x" * (MAX_REQUEST_BYTES + 10) + b"\n")
        reader = conn.makefile("rb")
        reply = json.loads(reader.readline())
        assert reply["ok"] is False and "longer than" in reply["error"]
        assert reader.readline() == b""  # and the connection is closed
    assert ok(handle, "status")["runner"]["ready"] is True


def test_connections_beyond_the_bound_are_told_busy(ctl_runner: tuple[RunnerHandle, AgentClient]) -> None:
    handle, _ = ctl_runner
    assert handle.config.control_socket is not None
    idle = [ControlClient(handle.config.control_socket, timeout=30) for _ in range(MAX_CONNECTIONS)]
    try:
        for client in idle:  # each is served (a thread each) before the next one is opened
            assert client.request("version")["ok"] is True
        with ControlClient(handle.config.control_socket, timeout=30) as extra:
            reply = extra.read_reply()
            assert reply["ok"] is False and reply["error"].startswith("busy")
    finally:
        for client in idle:
            client.close()
    wait_until(lambda: answers(handle, "version"), timeout=10, what="a free connection slot")


def answers(handle: RunnerHandle, command: str) -> bool:
    """True once a request gets a good answer (a `busy` connection may also be reset before its reply is read)."""
    try:
        return bool(ask(handle, command)["ok"])
    except ControlError:
        return False


def test_the_socket_is_private_and_removed_at_stop(ctl_config: RunnerConfig, control_dir: Path) -> None:
    path = control_dir / "made" / "control.sock"
    handle = start(attrs.evolve(ctl_config, control_socket=path))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert [p.name for p in path.parent.iterdir()] == ["control.sock"]  # no temporary name left
    finally:
        handle.stop(timeout=5)
    assert not path.exists()


def test_a_stale_socket_is_replaced(ctl_config: RunnerConfig) -> None:
    assert ctl_config.control_socket is not None
    with socket.socket(socket.AF_UNIX) as dead:  # what a runner killed with SIGKILL leaves: a file nobody listens on
        dead.bind(str(ctl_config.control_socket))
    with running(ctl_config) as (handle, _):
        assert ok(handle, "version")["pid"] == os.getpid()
        assert any("replaced the stale control socket" in line for line in handle.log_book.tail("control", 10))


def test_a_live_socket_is_an_error_at_start_up(ctl_config: RunnerConfig) -> None:
    with running(ctl_config) as (first, _):
        with pytest.raises(RunnerStartError, match="another runner answers on the control socket"):
            start(attrs.evolve(ctl_config, user_input_socket=ctl_config.user_input_socket.with_name("other.sock")))
        assert ok(first, "version")["pid"] == os.getpid()  # the first runner keeps its socket


def test_a_file_that_is_not_a_socket_is_left_alone(ctl_config: RunnerConfig) -> None:
    assert ctl_config.control_socket is not None
    ctl_config.control_socket.write_text("precious")
    with pytest.raises(RunnerStartError, match="is not a socket"):
        start(ctl_config)
    assert ctl_config.control_socket.read_text() == "precious"


def test_a_runner_whose_default_socket_is_taken_gets_one_of_its_own(
    ctl_config: RunnerConfig, control_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(control_dir))  # the default folder: this test's own
    folder = control_dir / "kernel-runner"
    config = attrs.evolve(ctl_config, control_socket=default_socket_path())
    folder.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as dead:  # a runner killed with SIGKILL left its own socket
        dead.bind(str(folder / "control-999999.sock"))
    with running(config) as (first, _):
        assert first.control is not None and first.control.path == folder / "control.sock"
        others = [start(attrs.evolve(config, user_input_socket=control_dir / f"input{i}.sock")) for i in (1, 2)]
        try:
            second, third = (handle.control for handle in others)
            assert second is not None and third is not None
            assert second.path == folder / f"control-{os.getpid()}.sock"
            assert third.path.name.startswith(f"control-{os.getpid()}-")  # same pid: another PID namespace's case
            for path in (first.control.path, second.path, third.path):
                with ControlClient(path, timeout=30) as client:
                    assert client.request("status")["runner"]["control_socket"] == str(path)
            assert any(f"this runner's is {second.path}" in line for line in others[0].log_book.tail("control", 50))
            assert any("removed the stale control socket" in line and "control-999999.sock" in line
                       for line in first.log_book.tail("control", 50))
            assert sorted(p.name for p in folder.iterdir()) == sorted(
                ["control.sock", second.path.name, third.path.name])
        finally:
            for handle in others:
                handle.stop(timeout=5)
    assert list(folder.iterdir()) == [], "each runner removed its own socket"
