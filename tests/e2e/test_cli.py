"""`python -m kernel_runner` as a real subprocess: start, status, signals, exit codes, nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kernel_runner.client import AgentClient
from tests.support.procs import assert_gone

BIND_LINE = re.compile(rb"binding to tcp://[^:]+:(\d+)")


class RunnerProcess:
    def __init__(self, tmp_path: Path, *extra: str, lang: str = "app", ports: tuple[int, int] = (0, 0)) -> None:
        self.config_dir = tmp_path / "config"
        self.work_dir = tmp_path / "work"
        self.config_dir.mkdir(exist_ok=True)
        self.work_dir.mkdir(exist_ok=True)
        self.argv = [
            sys.executable, "-m", "kernel_runner", lang,
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


def test_start_status_sigterm_exits_zero_without_leftovers(spawn: type[RunnerProcess]) -> None:
    runner = spawn()
    port_in, port_out = runner.read_ports()
    with AgentClient(port_in=port_in, port_out=port_out) as agent:
        body = agent.status(timeout=10)
    assert isinstance(body["started_at"], float)
    children = psutil.Process(runner.proc.pid).children(recursive=True)
    started = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert_gone([c.pid for c in children], timeout=2)
    assert "shutting down" in runner.stderr()


def test_sigint_with_pending_output_and_no_agent_still_exits(spawn: type[RunnerProcess]) -> None:
    runner = spawn()
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
    started = time.monotonic()
    assert runner.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5, "pending output for an absent agent must not hold up the exit"


def test_process_title_names_the_runner(spawn: type[RunnerProcess]) -> None:
    runner = spawn()
    runner.read_ports()
    cmdline = " ".join(psutil.Process(runner.proc.pid).cmdline())
    assert "kernel-runner: app" in cmdline
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=10) == 0


def test_ports_come_from_intrinsic_ports_json(spawn: type[RunnerProcess], tmp_path: Path) -> None:
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    wanted = (free_port(), free_port())
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


def test_json_logs_are_json_lines(spawn: type[RunnerProcess]) -> None:
    import json

    runner = spawn("--log-json")
    runner.read_ports()
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=10) == 0
    lines = [line for line in runner.stderr().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any(r["record"]["extra"]["child"] == "router" for r in records)


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
