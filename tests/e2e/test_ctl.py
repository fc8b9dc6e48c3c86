"""`kernel-runner ctl` as ops call it (a real subprocess) against a runner process (`python -m kernel_runner`):
every command, exit codes, one-line errors, `tail -f`, the socket's path from the environment, a dead runner's
socket replaced, and the imports a health check pays for (docs/operations.md §1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_runner.control.protocol import SOCKET_ENV
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.runner_process import RunnerProcess, RunnerProcesses, runner_processes
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

CTL = (sys.executable, "-m", "kernel_runner", "ctl")
WEB = {"command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"]}
# Gives up (FATAL) the first time it exits, a second and a half after its port opened.
DOOMED = {"command": [*WEB["command"], "--exit-after", "1.5"], "restart": {"max_restarts": 0}}
# What `ctl` must never import: a health check starts a fresh process each time (docs/architecture.md §2.1).
HEAVY = ("pykka", "zmq", "jupyter_client", "loguru", "kernel_runner.actors", "kernel_runner.runtime.root",
         "kernel_runner.supervisor", "kernel_runner.cli.runner", "kernel_runner.control.server",
         "kernel_runner.control.commands")
IMPORTTIME_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)")
__all__ = ["runner_processes"]  # the fixture


def ctl(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)


@pytest.fixture
def sock() -> Iterator[Path]:
    """A short path: pytest's tmp_path can pass the 107 bytes a unix socket path may have."""
    folder = Path(tempfile.mkdtemp(prefix="krctl-"))
    yield folder / "control.sock"
    shutil.rmtree(folder, ignore_errors=True)


def table_rows(stdout: str) -> list[list[str]]:
    """`ctl status`'s rows after its header lines, each as its first two cells (child, state)."""
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("CHILD ")) + 1
    return [line.split()[:2] for line in lines[first:]]


def wait_ready(path: Path, env: dict[str, str] | None = None) -> None:
    args = () if env is not None else ("--socket", str(path))
    wait_until(lambda: ctl(*args, "ready", env=env).returncode == 0, timeout=60, what="`ctl ready` answering 0")


def started_runner(runner_processes: RunnerProcesses, sock: Path) -> RunnerProcess:
    runner = runner_processes.start("app", "--control-socket", str(sock), service_defs={"web": WEB, "doomed": DOOMED})
    wait_ready(sock)
    return runner


def pgrep(*args: str) -> list[int]:
    found = subprocess.run(["pgrep", *args], capture_output=True, text=True, timeout=30, check=False)
    return [int(pid) for pid in found.stdout.split()]


def test_pkill_f_python_does_not_find_the_runner(runner_processes: RunnerProcesses, sock: Path) -> None:
    """docs/protocol.md §9.3: user code's `pkill -f python` must not end the runner (agents since 25.6.15 / 25.15
    name theirs for this); the title still reads as its command line, and `ctl status` has the one it was given."""
    runner = runner_processes.start("app", "--control-socket", str(sock), runtime_path=sys.executable)
    wait_ready(sock)
    assert "python" in sys.executable  # the runtime path on its command line says python, like the agent's
    title = Path(f"/proc/{runner.pid}/cmdline").read_bytes().rstrip(b"\0").decode()
    assert title.startswith(f"kernel-runner: app {sys.executable.replace('python', 'Python')} --bind 127.0.0.1 ")
    assert Path(f"/proc/{runner.pid}/comm").read_text().strip() == "kernel-runner:"
    assert runner.pid in pgrep("-f", "kernel-runner")
    assert runner.pid not in pgrep("-f", "python")
    assert runner.pid not in pgrep("python")  # by process name
    status = json.loads(ctl("--socket", str(sock), "--json", "status").stdout)
    assert status["runner"]["command"][:5] == [sys.executable, "-m", "kernel_runner", "app", sys.executable]
    assert runner.stop() == 0


def test_every_command_through_the_command_line(runner_processes: RunnerProcesses, sock: Path) -> None:
    runner = started_runner(runner_processes, sock)
    at = ("--socket", str(sock))

    version = ctl(*at, "version")
    assert (version.returncode, version.stderr) == (0, "")
    assert version.stdout.startswith(f"runner 0.1.0 (app, pid {runner.pid}, python ")

    status = ctl(*at, "status")
    assert status.returncode == 0, status.stderr
    header, command, columns, *rows = status.stdout.splitlines()
    assert header.startswith("kernel-runner 0.1.0  app  pid") and "  ready  agent ports" in header
    assert command.startswith(f"command: {sys.executable} -m kernel_runner app --bind 127.0.0.1 ")
    assert columns.split()[:5] == ["CHILD", "STATE", "HEALTH", "PID", "UPTIME"]  # HEALTH: docs/operations.md §1.3
    assert [row.split()[:2] for row in rows] == [["router", "RUNNING"], ["lang", "RUNNING"], ["services", "RUNNING"]]

    port = free_port()
    started = ctl("start", "service:web", "--port", str(port), *at)  # options after the command too
    assert started.returncode == 0, started.stderr
    assert re.fullmatch(r"service:web: started \(generation 1, pid \d+\)\n", started.stdout)
    again = ctl(*at, "start", "service:web")
    assert (again.returncode, again.stdout) == (0, "service:web: already started (RUNNING)\n")

    tree = json.loads(ctl("--json", *at, "status").stdout)
    web = next(row for row in tree["children"] if row["id"] == "service:web")
    assert (web["state"], web["generation"], web["extra"]["port"]) == ("RUNNING", 1, port)

    restarted = ctl(*at, "restart", "service:web")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.startswith("service:web: restarted (generation 2, pid ")

    tail = ctl(*at, "tail", "-n", "3", "service:web")
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 3

    signalled = ctl(*at, "signal", "service:web", "TERM")
    assert signalled.returncode == 0 and re.fullmatch(r"service:web: sent SIGTERM to pid \d+\n", signalled.stdout)

    refused = ctl(*at, "stop", "lang")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("kernel-runner ctl: stop failed: lang is one of the runner's own children")
    wait_until(lambda: ctl(*at, "stop", "service:web").returncode == 0, timeout=30, what="service:web stopped")
    stopped = ctl(*at, "status")
    assert stopped.returncode == 4  # a child shown is not running
    assert table_rows(stopped.stdout)[-1] == ["service:web", "STOPPED"]

    reload = ctl(*at, "reload")
    assert (reload.returncode, reload.stdout) == (
        0, "reloaded: 2 loaded; added [], changed [], removed [], 0 invalid\n")
    unknown = ctl(*at, "restart", "nope")
    assert unknown.returncode == 1 and "no child nope" in unknown.stderr
    usage = ctl(*at, "launch")
    assert usage.returncode == 2 and "invalid choice: 'launch'" in usage.stderr

    assert runner.stop() == 0
    assert not sock.exists()  # removed at the stop


def test_tail_follow_streams_new_lines_until_interrupted(runner_processes: RunnerProcesses, sock: Path) -> None:
    started_runner(runner_processes, sock)
    assert ctl("--socket", str(sock), "start", "service:web", "--port", str(free_port())).returncode == 0
    follower = subprocess.Popen([*CTL, "--socket", str(sock), "tail", "-f", "-n", "1", "service:web"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    stdout = follower.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # The backlog line comes once the runner registered the follower: every line after it is streamed.
        wait_until(lambda: lines, timeout=30, what="tail -f's backlog line")
        pid = json.loads(ctl("--json", "--socket", str(sock), "restart", "service:web").stdout)["pid"]
        wait_until(lambda: any(f"listener {pid} starting" in line for line in lines), timeout=30,
                   what="the restarted service's first line streamed")
        assert any("by hand (kernel-runner ctl)" in line for line in lines)
    finally:
        follower.send_signal(signal.SIGINT)
        code = follower.wait(timeout=30)
        reader.join(timeout=10)
    assert code == 0, follower.stderr.read() if follower.stderr else ""


def test_no_runner_answering(sock: Path) -> None:
    status = ctl("--socket", str(sock), "status")
    assert status.returncode == 3
    assert status.stderr == (f"kernel-runner ctl: no runner answering on {sock}: is it running? (--socket PATH or "
                             f"${SOCKET_ENV} names another socket)\n")
    ready = ctl("--socket", str(sock), "ready")  # a HEALTHCHECK: unhealthy is 1
    assert ready.returncode == 1 and "no runner answering" in ready.stderr


def test_the_environment_names_the_socket_for_the_runner_and_ctl(runner_processes: RunnerProcesses, sock: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOCKET_ENV, str(sock))  # the runner process inherits it
    runner = runner_processes.start("app")
    wait_ready(sock, env=dict(os.environ))
    assert sock.is_socket()
    version = ctl("version", env=dict(os.environ))
    assert version.returncode == 0 and f"pid {runner.pid}," in version.stdout


def test_a_killed_runners_socket_is_replaced_by_the_next_runner(runner_processes: RunnerProcesses,
                                                                sock: Path) -> None:
    first = started_runner(runner_processes, sock)
    first.close()  # SIGKILL: nothing removes the socket file
    assert sock.is_socket()
    dead = ctl("--socket", str(sock), "status")
    assert dead.returncode == 3 and "no runner answering" in dead.stderr
    second = started_runner(runner_processes, sock)
    assert f"pid {second.pid}," in ctl("--socket", str(sock), "version").stdout


def test_a_health_check_loads_no_actor_code(runner_processes: RunnerProcesses, sock: Path) -> None:
    started_runner(runner_processes, sock)
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "kernel_runner", "ctl", "--socket", str(sock),
                           "status"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = [m.group(1) for m in map(IMPORTTIME_LINE.match, done.stderr.splitlines()) if m]
    assert "kernel_runner.cli.ctl" in loaded  # the list is the real one
    heavy = sorted(name for name in loaded if name.startswith(HEAVY))
    assert heavy == [], heavy


def test_status_of_named_children_and_its_exit_codes(runner_processes: RunnerProcesses, sock: Path) -> None:
    started_runner(runner_processes, sock)
    at = ("--socket", str(sock))
    assert ctl(*at, "status").returncode == 0
    named = ctl(*at, "status", "services", "lang")
    assert named.returncode == 0, named.stderr
    assert table_rows(named.stdout) == [["services", "RUNNING"], ["lang", "RUNNING"]]
    unknown = ctl(*at, "status", "lang", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr == "kernel-runner ctl: no child nope (`kernel-runner ctl status` lists them)\n"
    assert ctl(*at, "start", "service:doomed", "--port", str(free_port())).returncode == 0
    wait_until(lambda: ctl(*at, "status", "service:doomed").returncode == 4, timeout=30, what="doomed FATAL")
    assert "FATAL" in ctl(*at, "status", "service:doomed").stdout
    assert ctl(*at, "status").returncode == 4  # supervisorctl's "not running", as 4 (3 is: no runner)
    assert ctl("--json", *at, "status").returncode == 4
    assert ctl(*at, "status", "lang").returncode == 0


def test_a_stopped_service_starts_again_on_its_port(runner_processes: RunnerProcesses, sock: Path) -> None:
    started_runner(runner_processes, sock)
    at = ("--socket", str(sock))
    no_port = ctl(*at, "start", "service:web")
    assert no_port.returncode == 1 and "give it one (`kernel-runner ctl start service:web --port N`)" in no_port.stderr
    port = free_port()
    assert ctl(*at, "start", "service:web", "--port", str(port)).returncode == 0
    stopped = ctl(*at, "stop", "service:web")
    assert (stopped.returncode, stopped.stdout) == (0, "service:web: stopped (generation 1)\n")
    assert ctl(*at, "stop", "service:web").stdout == "service:web: already stopped\n"
    row = next(line for line in ctl(*at, "status").stdout.splitlines() if line.startswith("service:web"))
    assert row.split()[:2] == ["service:web", "STOPPED"] and f"port={port}" in row
    again = ctl(*at, "start", "service:web")
    assert again.returncode == 0, again.stderr
    assert re.fullmatch(r"service:web: started \(generation 2, pid \d+\)\n", again.stdout)
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass


def test_reload_names_each_invalid_definition_and_fails(runner_processes: RunnerProcesses, sock: Path) -> None:
    runner = started_runner(runner_processes, sock)
    (runner.defs_dir / "broken.json").write_text(json.dumps({"command": 5}))
    reload = ctl("--socket", str(sock), "reload")
    assert reload.returncode == 1
    assert reload.stdout == "reloaded: 2 loaded; added [], changed [], removed [], 1 invalid [broken]\n"
    [line] = reload.stderr.splitlines()
    assert line.startswith(f"kernel-runner ctl: invalid service definition: {runner.defs_dir / 'broken.json'}: ")
    assert line.endswith("got a number @ $.command"), "the file, and the field at fault"


def test_tail_of_no_lines_prints_nothing(runner_processes: RunnerProcesses, sock: Path) -> None:
    started_runner(runner_processes, sock)
    tail = ctl("--socket", str(sock), "tail", "-n", "0", "lang")
    assert (tail.returncode, tail.stdout, tail.stderr) == (0, "", "")


def test_several_runners_on_the_host_are_listed_not_guessed(runner_processes: RunnerProcesses,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    runtime_dir = Path(tempfile.mkdtemp(prefix="krx-"))  # the default folder, this test's own (short for the socket)
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))  # the runners and ctl inherit it
        monkeypatch.delenv(SOCKET_ENV, raising=False)
        folder = runtime_dir / "kernel-runner"
        first = runner_processes.start("app")
        wait_ready(folder / "control.sock")
        second = runner_processes.start("app")
        own = folder / f"control-{second.pid}.sock"
        wait_ready(own)
        assert f"this runner's is {own}" in second.log_text()

        for command in (("status",), ("restart", "lang"), ("signal", "lang", "TERM")):
            refused = ctl(*command)
            assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
            assert refused.stderr.splitlines()[0] == (
                "kernel-runner ctl: 2 runners answer on this host; pick one with --socket PATH or --pid PID:")
            assert f"pid {first.pid}  app" in refused.stderr and str(folder / "control.sock") in refused.stderr
            assert f"pid {second.pid}  app" in refused.stderr and str(own) in refused.stderr
        listed = json.loads(ctl("--json", "status").stdout)
        assert sorted(row["pid"] for row in listed["runners"]) == sorted([first.pid, second.pid])
        assert ctl("ready").returncode == 1  # a HEALTHCHECK's unhealthy, never Docker's reserved 2
        assert f"pid {second.pid}," in ctl("--pid", str(second.pid), "version").stdout
        assert f"pid {first.pid}," in ctl("version", "--pid", str(first.pid)).stdout
        nobody = ctl("--pid", "1", "version")
        assert nobody.returncode == 3 and "no runner with pid 1 answers in" in nobody.stderr
        both = ctl("--pid", "1", "--socket", str(own), "version")
        assert both.returncode == 2 and "give one of them" in both.stderr

        second.close()  # SIGKILL: its socket stays, and nobody answers on it
        assert own.is_socket()
        alone = ctl("version")
        assert alone.returncode == 0 and f"pid {first.pid}," in alone.stdout, alone.stderr
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
