"""`python -m kernel_runner` as a real subprocess: start, status, signals, exit codes, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernel_runner.client import AgentClient
from tests.conftest import CHILDREN
from tests.support.ports import free_port, free_ports, port_is_free
from tests.support.procs import assert_gone, descendants
from tests.support.waiting import wait_until

BIND_LINE = re.compile(rb"binding to tcp://[^:]+:(\d+)")


class RunnerProcess:
    def __init__(self, tmp_path: Path, *extra: str, lang: str = "app", ports: tuple[int, int] = (0, 0),
                 program: Sequence[str] = ("-m", "kernel_runner"), service_defs: dict[str, Any] | None = None) -> None:
        self.config_dir = tmp_path / "config"
        self.work_dir = tmp_path / "work"
        self.config_dir.mkdir(exist_ok=True)
        self.work_dir.mkdir(exist_ok=True)
        (tmp_path / "defs").mkdir(exist_ok=True)
        for name, body in (service_defs or {}).items():
            (tmp_path / "defs" / f"{name}.json").write_text(json.dumps(body))
        self.argv = [
            sys.executable, *program, lang,
            "--config-dir", str(self.config_dir), "--work-dir", str(self.work_dir),
            "--service-defs-dir", str(tmp_path / "defs"), "--bind", "127.0.0.1",
            "--user-input-socket", str(tmp_path / "input.sock"), "--no-intrinsic-services",
            *(["--port-in", str(ports[0]), "--port-out", str(ports[1])] if ports != (-1, -1) else []),
            *extra,
        ]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def read_ports(self, timeout: float = 20.0) -> tuple[int, int]:
        assert self.proc.stdout is not None
        ports: list[int] = []
        deadline = time.monotonic() + timeout
        while len(ports) < 2:
            assert time.monotonic() < deadline, "runner did not print its bind lines"
            line = self.proc.stdout.readline()
            assert line, f"runner exited early: {self.proc.wait(5)} {self.stderr()}"
            match = BIND_LINE.search(line)
            if match:
                ports.append(int(match.group(1)))
        return ports[0], ports[1]

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[type[RunnerProcess]]:
    made: list[RunnerProcess] = []

    class Spawn(RunnerProcess):
        def __init__(self, *extra: str, **kwargs: object) -> None:
            super().__init__(tmp_path, *extra, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    yield Spawn
    for runner in made:
        runner.kill()


# The stop's hard deadline is 120 s and the waits 60 s: only an orderly stop (not the deadline's watchdog) fits.
STOP_DEADLINE = ("--shutdown-deadline", "120")


def test_start_status_sigterm_exits_zero_without_leftovers(spawn: type[RunnerProcess]) -> None:
    runner = spawn(*STOP_DEADLINE)
    port_in, port_out = runner.read_ports()
    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        body = agent.status(timeout=30)
    assert isinstance(body["started_at"], float)
    children = psutil.Process(runner.proc.pid).children(recursive=True)
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=60) == 0
    assert_gone([c.pid for c in children], timeout=30)
    stderr = runner.stderr()
    assert "shutting down" in stderr and "did not finish within" not in stderr


def test_sigint_with_pending_output_and_no_agent_still_exits(spawn: type[RunnerProcess]) -> None:
    runner = spawn(*STOP_DEADLINE)
    port_in, _ = runner.read_ports()
    # An agent that sends but never reads: the replies pile up in the runner's outbox.
    import zmq

    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port_in}")
    for _ in range(50):
        push.send_multipart([b"status", b""])
    push.close(linger=1000)
    runner.proc.send_signal(signal.SIGINT)
    # Pending output for an absent agent must not hold up the exit until the deadline.
    assert runner.proc.wait(timeout=60) == 0
    assert "did not finish within" not in runner.stderr()


def test_process_title_names_the_runner(spawn: type[RunnerProcess]) -> None:
    runner = spawn()
    runner.read_ports()
    cmdline = " ".join(psutil.Process(runner.proc.pid).cmdline())
    assert "kernel-runner: app" in cmdline
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=10) == 0


def test_ports_come_from_intrinsic_ports_json(spawn: type[RunnerProcess], tmp_path: Path) -> None:
    wanted = tuple(free_ports(2))
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "intrinsic-ports.json").write_text(f'{{"replin": {wanted[0]}, "replout": {wanted[1]}}}')
    runner = spawn(ports=(-1, -1))
    assert runner.read_ports() == wanted
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=10) == 0


def test_bad_intrinsic_ports_json_is_reported_and_defaults_used(spawn: type[RunnerProcess], tmp_path: Path) -> None:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "intrinsic-ports.json").write_text("{oops")
    runner = spawn()  # explicit port 0 on the command line still wins, so the test never needs :2000
    port_in, port_out = runner.read_ports()
    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        assert "started_at" in agent.status(timeout=10)
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=10) == 0
    assert "intrinsic-ports.json: not valid JSON" in runner.stderr()


def test_unknown_language_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "kernel_runner", "klingon"], capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert b"unknown LANG 'klingon'" in proc.stderr and b"python" in proc.stderr


def test_missing_language_prints_usage(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "kernel_runner"], capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert b"usage: kernel-runner" in proc.stderr


def test_log_json_is_one_flat_object_per_line_with_one_event_per_transition(spawn: type[RunnerProcess]) -> None:
    # Issue 11 point 3: flat fields (no loguru record nesting), nothing on stdout, an exit logged once.
    port_in, port_out = free_ports(2)
    runner = spawn("--log-json", ports=(port_in, port_out), service_defs={"web": listener()})
    lines: list[bytes] = []
    assert runner.proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(runner.proc.stderr.readline, b"")), daemon=True)
    reader.start()

    def web_events() -> list[dict[str, Any]]:
        records = [json.loads(line) for line in list(lines) if line.strip()]
        return [record for record in records if record["child"] == "service:web" and "event" in record]

    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        agent.status(timeout=30)
        start_services(agent, ["web"])
        first = next(proc for proc in descendants(runner.proc.pid) if is_listener(proc))
        first.kill()
        wait_until(lambda: [r["event"] for r in web_events()].count("running") == 2, timeout=30,
                   what="the service restarted and running")
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=30) == 0
    reader.join(timeout=10)
    assert runner.proc.stdout is not None and runner.proc.stdout.read() == b""
    records = [json.loads(line) for line in lines if line.strip()]
    for record in records:
        assert {"ts", "level", "child", "message"} <= record.keys(), record
        assert not any(isinstance(value, dict) for value in record.values()), record
    web = web_events()
    kinds = [record["event"] for record in web]
    assert kinds[:3] == ["starting", "spawned", "running"], kinds
    killed = [record for record in web if record["event"] == "exited" and record.get("signal") == "SIGKILL"]
    assert len(killed) == 1 and killed[0]["pid"] == first.pid and killed[0]["reason"] == "killed", web
    after = kinds[kinds.index("exited") + 1:]
    assert after[:4] == ["backoff", "starting", "spawned", "running"], kinds
    backoff = web[kinds.index("exited") + 1]
    assert backoff["attempt"] == 1 and backoff["delay_s"] >= 0
    assert kinds.count("exited") == 2  # the kill, and the stop at shutdown: each exit once


def is_listener(proc: psutil.Process) -> bool:
    try:
        return "listener.py" in " ".join(proc.cmdline())
    except psutil.Error:  # gone, or a zombie not yet reaped
        return False


def test_client_cli_talks_to_a_running_runner(spawn: type[RunnerProcess]) -> None:
    runner = spawn()
    port_in, port_out = runner.read_ports()
    base = [sys.executable, "-m", "kernel_runner", "client", "--port-in", str(port_in), "--port-out", str(port_out),
            "--timeout", "10"]
    status = subprocess.run([*base, "status"], capture_output=True, timeout=30)
    assert status.returncode == 0 and b"started_at" in status.stdout
    apps = subprocess.run([*base, "get-apps"], capture_output=True, timeout=30)
    assert apps.returncode == 0 and b'"status": "done"' in apps.stdout
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=10) == 0


# ---- the runner's own life (issue 14) --------------------------------------------------------------------------------


def listener(*flags: str) -> dict[str, Any]:
    return {"command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}", *flags]}


def start_services(agent: AgentClient, names: Sequence[str]) -> None:
    for name in names:
        port = free_port()
        reply = agent.start_service({"name": name, "port": port, "ports": [port], "protocol": "tcp", "options": {}},
                                    timeout=20)
        assert reply == {"status": "started"}, (name, reply)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT])
def test_each_stop_signal_is_logged_and_stops_everything(spawn: type[RunnerProcess], stop_signal: signal.Signals) -> None:
    # Issue 14: a signal killed the runner without a log line and left its services running under PID 1.
    runner = spawn(service_defs={"web": listener()})
    port_in, port_out = runner.read_ports()
    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        start_services(agent, ["web"])
    below = [proc.pid for proc in descendants(runner.proc.pid)]
    assert below, "the service runs below the runner"
    runner.proc.send_signal(stop_signal)
    assert runner.proc.wait(timeout=30) == 0
    log = runner.stderr()
    assert f"received {stop_signal.name}; shutting down" in log and "stopped (clean)" in log, log
    assert_gone(below, timeout=5)
    assert port_is_free(port_in) and port_is_free(port_out)


def app_names(agent: AgentClient) -> list[str]:
    return [app["name"] for app in agent.get_apps(timeout=20)["data"]]


def test_sighup_reloads_the_service_definitions_and_keeps_serving(spawn: type[RunnerProcess], tmp_path: Path) -> None:
    # Issue 11 point 6: SIGHUP is supervisord's `reread`, not a stop; a running service is not restarted by it.
    runner = spawn(service_defs={"web": listener(), "old": listener()})
    port_in, port_out = runner.read_ports()
    defs = tmp_path / "defs"
    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        start_services(agent, ["web"])
        web_pids = [proc.pid for proc in descendants(runner.proc.pid)]
        (defs / "fresh.json").write_text(json.dumps(listener()))
        (defs / "spare.json").write_text(json.dumps(listener()))
        (defs / "web.json").write_text(json.dumps(listener("--grandchild")))
        (defs / "old.json").unlink()
        runner.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "fresh" in app_names(agent), timeout=30, what="the new definition listed by get-apps")
        assert app_names(agent) == ["fresh", "spare", "web"]
        start_services(agent, ["fresh"])
        assert all(psutil.pid_exists(pid) for pid in web_pids), "the running service was not restarted"
        # A file broken while editing: the old definition of that name stays, and the log says why.
        (defs / "spare.json").write_text('{"command": ["oops",')
        (defs / "later.json").write_text(json.dumps(listener()))
        runner.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "later" in app_names(agent), timeout=30, what="the second reload")
        start_services(agent, ["spare"])  # still the previous, good definition
        assert runner.proc.poll() is None, "SIGHUP must not stop the runner"
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=30) == 0
    log = runner.stderr()
    assert "received SIGHUP; rereading the service definitions" in log, log
    assert "reloaded service definitions: 3 loaded, added [fresh, spare], changed [web], removed [old], 0 invalid" \
        in log, log
    assert "running services are not restarted" in log
    assert "reloaded service definitions: 3 loaded, added [later], changed [], removed [], 1 invalid" in log, log
    assert "kept the previous definition of [spare]" in log
    assert "service definition not reloaded, keeping the previous one:" in log and "spare.json" in log
    assert "stopped (clean)" in log


def test_a_daemon_that_an_exec_started_goes_with_the_runner(spawn: type[RunnerProcess]) -> None:
    runner = spawn()
    port_in, port_out = runner.read_ports()
    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        result = agent.run("exec", f"{sys.executable} {CHILDREN / 'daemonize.py'} 600", timeout=30)
    assert result.exit_code == 0
    daemon = int(result.stdout.split()[1])
    # Its parents are gone: as their subreaper, the runner adopted it (without, it would now belong to PID 1).
    assert psutil.Process(daemon).ppid() == runner.proc.pid
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=30) == 0
    assert_gone([daemon], timeout=5)
    assert f"left behind: [{daemon}]" in runner.stderr()


def test_adopted_orphans_are_reaped_and_no_exit_status_is_stolen(spawn: type[RunnerProcess]) -> None:
    runner = spawn()
    port_in, port_out = runner.read_ports()
    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        daemons = []
        for _ in range(3):
            result = agent.run("exec", f"{sys.executable} {CHILDREN / 'daemonize.py'} 0.2", timeout=30)
            daemons.append(int(result.stdout.split()[1]))
        # Each daemon ends by itself; reaped, it is gone from the process table (a zombie would stay listed).
        wait_until(lambda: not any(psutil.pid_exists(pid) for pid in daemons), timeout=10, what="the orphans reaped")
        # The runner's own children keep their exit statuses while orphans are reaped around them.
        codes = [agent.run("exec", f"exit {code}", timeout=30).exit_code for code in (7, 0, 3)]
    assert codes == [7, 0, 3]
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=30) == 0


def test_services_that_ignore_sigterm_are_gone_after_the_stop(spawn: type[RunnerProcess]) -> None:
    runner = spawn(service_defs={
        "deaf": listener("--ignore-term"),
        "deaf-family": listener("--ignore-term", "--grandchild"),
        "polite": listener(),
    })
    port_in, port_out = runner.read_ports()
    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        start_services(agent, ["deaf", "deaf-family", "polite"])
    below = [proc.pid for proc in descendants(runner.proc.pid)]
    assert len(below) >= 4, "three services and one grandchild"
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=30) == 0
    assert_gone(below, timeout=5)
    log = runner.stderr()
    assert "service deaf did not stop within its grace; SIGKILL to its tree" in log
    assert "stopped (clean)" in log


def test_a_stuck_actor_cannot_keep_the_process_past_its_deadline(spawn: type[RunnerProcess]) -> None:
    # Issue 14: the stop was logged, but a non-daemon actor thread held the exit for ever, and the ports with it.
    runner = spawn("--shutdown-deadline", "3", program=(str(CHILDREN / "stuck_runner.py"),))
    port_in, port_out = runner.read_ports()
    runner.proc.send_signal(signal.SIGTERM)
    runner.proc.wait(timeout=30)  # a hang fails here
    log = runner.stderr()
    assert "stopped (forced: stuck)" in log, log
    assert "still alive after the stop: actors StuckOnStop" in log
    assert port_is_free(port_in) and port_is_free(port_out)


def test_the_hard_deadline_ends_a_process_that_hangs_anyway() -> None:
    hang = ("import threading\nfrom loguru import logger\nfrom kernel_runner.cli.runner import HardDeadline\n"
            "HardDeadline(0.5, log=logger).arm()\nthreading.Event().wait()\n")
    proc = subprocess.run([sys.executable, "-c", hang], capture_output=True, timeout=30)
    assert proc.returncode == 1
    assert b"the stop did not finish within 0.5s" in proc.stderr


def test_the_hard_deadline_holds_even_when_no_python_thread_can_run() -> None:
    # A regular expression that backtracks for ages holds the GIL, so the watchdog thread never runs: SIGALRM,
    # left to its default action, ends the process from the kernel's side.
    hang = ("import re\nfrom loguru import logger\nfrom kernel_runner.cli.runner import HardDeadline\n"
            "HardDeadline(0.2, log=logger).arm()\nre.match(r'(a*)*b', 'a' * 64)\n")
    proc = subprocess.run([sys.executable, "-c", hang], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGALRM
