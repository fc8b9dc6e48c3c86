"""`python -m kernel_runner` as its own process, as the agent meets it: the reliability suites signal it, SIGKILL it
and measure its memory, none of which an in-process runner (tests/support/runners.py) can stand for."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernel_runner.client import AgentClient
from tests.support.procs import alive, assert_gone
from tests.support.waiting import wait_until

BIND_LINE = re.compile(r"binding to tcp://[^:]+:(\d+)")
BIND_TIMEOUT_S = 30.0
# The CLI's own exit path: the orderly stop is bounded by --shutdown-deadline, then leftovers are killed.
EXIT_SLACK_S = 10.0


class RunnerProcess:
    """One runner process below `root` (config, work and service-defs folders, its log file), plus its agents.

    stdout (the bind lines) and stderr (the log) go to files, so a runner that logs a lot never blocks on a full pipe.
    Every pid seen below the runner is remembered, so a test can check after the stop that none is left. `prefix`
    runs the runner under another program (a container-like PID namespace); `pid` is then that program's.
    """

    def __init__(self, root: Path, lang: str = "app", *extra: str, runtime_path: str | None = None,
                 shutdown_deadline_s: float = 15.0, service_defs: Mapping[str, Any] | None = None,
                 bootstrap: str | None = None, wait_for_bind: bool = True, prefix: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.config_dir = root / "config"
        self.work_dir = root / "work"
        self.defs_dir = root / "defs"
        for folder in (self.config_dir, self.work_dir, self.defs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for name, body in (service_defs or {}).items():  # docs/protocol.md §6.3: one file per service, read at start
            (self.defs_dir / f"{name}.json").write_text(json.dumps(body))
        if bootstrap is not None:  # docs/protocol.md §5.7: start-up is not over until it ends
            (self.work_dir / "bootstrap.sh").write_text(bootstrap)
        self.stdout_path = root / "runner.stdout"
        self.log_path = root / "runner.log"
        self.shutdown_deadline_s = shutdown_deadline_s
        argv = [
            *prefix, sys.executable, "-m", "kernel_runner", lang, *([runtime_path] if runtime_path else []),
            "--bind", "127.0.0.1", "--port-in", "0", "--port-out", "0",
            "--config-dir", str(self.config_dir), "--work-dir", str(self.work_dir),
            "--service-defs-dir", str(self.defs_dir), "--user-input-socket", str(root / "input.sock"),
            "--no-intrinsic-services", "--dropbear-dir", str(root / "no-dropbear"),
            "--ttyd-path", str(root / "no-ttyd"),
            "--shutdown-deadline", str(shutdown_deadline_s), *extra,
        ]
        environ = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
        environ.update(env or {})  # what the image sets for the runner (e.g. KERNEL_RUNNER_AGENT_GENERATION)
        with self.stdout_path.open("wb") as out, self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=environ,
                                         start_new_session=True)
        self.pid = self.proc.pid
        self.seen_pids: set[int] = set()
        self._agents: list[AgentClient] = []
        self.port_in = self.port_out = 0
        if wait_for_bind:
            self.wait_for_ports()

    # ---- start-up ---------------------------------------------------------------------------------------------
    def bind_lines(self) -> list[int]:
        try:
            text = self.stdout_path.read_text(errors="replace")
        except OSError:
            return []
        return [int(m.group(1)) for m in BIND_LINE.finditer(text)]

    def wait_for_ports(self, timeout: float = BIND_TIMEOUT_S) -> tuple[int, int]:
        def bound() -> list[int] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"the runner exited ({self.proc.returncode}) before binding:\n{self.log_tail()}")
            ports = self.bind_lines()
            return ports if len(ports) >= 2 else None

        ports = wait_until(bound, timeout=timeout, what="the runner's bind lines")
        assert ports is not None
        self.port_in, self.port_out = ports[0], ports[1]
        return self.port_in, self.port_out

    # ---- the agent side ---------------------------------------------------------------------------------------
    def agent(self) -> AgentClient:
        """A new agent connection; closed by `stop`/`close` unless the test closes it first."""
        client = AgentClient(port_in=self.port_in, port_out=self.port_out)
        self._agents.append(client)
        return client

    # ---- inspection -------------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        self.seen_pids.update(p.pid for p in found)
        return found

    def remember(self, *pids: int) -> None:
        """Pids learned another way (a pid file, a status reply) that must be gone after the stop too."""
        self.seen_pids.update(pids)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def running(self) -> bool:
        return self.proc.poll() is None

    # ---- the end ----------------------------------------------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        self.descendants()
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the runner did not exit within {timeout:g}s:\n{self.log_tail()}") from None

    def stop(self, signum: int = signal.SIGTERM, *, timeout: float | None = None) -> int:
        """Signal the runner, wait for its exit (bounded by its deadline plus slack) and check nothing is left."""
        self._close_agents()
        self.send_signal(signum)
        code = self.wait(timeout if timeout is not None else self.shutdown_deadline_s + EXIT_SLACK_S)
        self.assert_nothing_left()
        return code

    def assert_nothing_left(self, timeout: float = 5.0) -> None:
        assert_gone(self.seen_pids, timeout=timeout)

    def close(self) -> None:
        """Last resort for a test that failed half-way: SIGKILL the runner and whatever it left."""
        self._close_agents()
        if self.proc.poll() is None:
            self.descendants()
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in self.seen_pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def _close_agents(self) -> None:
        for client in self._agents:
            client.close()
        self._agents.clear()


def status_children(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A status reply's supervision rows by child id (docs/protocol.md §9.1)."""
    rows: list[dict[str, Any]] = body["kernel_runner"]["children"]
    return {row["id"]: row for row in rows}


class RunnerProcesses:
    """Starts runner processes for a test, each in its own folder below `base`; all are closed when the test ends."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[RunnerProcess] = []

    def start(self, lang: str = "app", *extra: str, **kwargs: Any) -> RunnerProcess:
        root = self.base / f"runner{len(self.made)}"
        root.mkdir(parents=True)
        runner = RunnerProcess(root, lang, *extra, **kwargs)
        self.made.append(runner)
        return runner

    def __iter__(self) -> Iterator[RunnerProcess]:
        return iter(self.made)

    def close(self) -> None:
        for runner in self.made:
            runner.close()


def pids_in(rows: Sequence[dict[str, Any]]) -> list[int]:
    return [row["pid"] for row in rows if row.get("pid")]


@pytest.fixture
def runner_processes(tmp_path: Path) -> Iterator[RunnerProcesses]:
    """Runner processes for one test; whatever a failed test left running is SIGKILLed at its end."""
    made = RunnerProcesses(tmp_path)
    try:
        yield made
    finally:
        made.close()
