"""Service figures, each against a baseline taken in the same run.

1. start-service → `started` for `python -m http.server`, vs spawning the same server bare and waiting for its port.
2. Restart latency after SIGKILL (backoff set to 0 so the figure is the runner's own work).
3. `status` round trip with 100 supervised services vs with none.
4. RSS per supervised service (this process hosts the runner; the services are separate processes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import psutil
from common import machine_line, silence_logs

from kernel_runner import RunnerConfig, start
from kernel_runner.client import AgentClient
from kernel_runner.config import RestartDefaults

ROUNDS = 15
MANY = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(delay)  # the baseline's own poll, as a person would write it
            delay = min(0.025, delay * 1.5)
    raise TimeoutError(port)


def server_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]


def bare_start_times() -> list[float]:
    times = []
    for _ in range(ROUNDS):
        port = free_port()
        t0 = time.perf_counter()
        proc = subprocess.Popen(server_argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        times.append(time.perf_counter() - t0)
        proc.kill()
        proc.wait()
    return times


def write_definitions(defs: Path, listeners: int) -> None:
    defs.mkdir(exist_ok=True)
    (defs / "web.json").write_text(json.dumps({"command": [*server_argv(0)[:-1], "{ports[0]}"]}))
    listener = json.dumps({"command": [sys.executable, "-c", LISTENER, "{ports[0]}"]})
    (defs / "listener.json").write_text(listener)
    for index in range(listeners):
        (defs / f"l{index}.json").write_text(listener)


def make_runner(tmp: Path) -> tuple[Any, AgentClient]:
    """Backoff 0 so the restart figure is the runner's own work, not its deliberate delay."""
    defs = tmp / "defs"
    config = RunnerConfig(
        lang="app", bind="127.0.0.1", port_in=0, port_out=0, config_dir=tmp, work_dir=tmp, service_defs_dir=defs,
        start_intrinsic_services=False, user_input_socket=tmp / "in.sock",
        restart=attrs.evolve(RestartDefaults(), backoff_initial_s=0.0, backoff_jitter=0.0, intensity_max_restarts=1000),
    )
    handle = start(config)
    return handle, AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out)


LISTENER = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(8)\n"
    "while True: s.accept()[0].close()\n"
)


def runner_start_times(agent: AgentClient) -> list[float]:
    times = []
    for _ in range(ROUNDS):
        port = free_port()
        name = "web"
        t0 = time.perf_counter()
        reply = agent.start_service({"name": name, "port": port, "ports": [port], "protocol": "http"})
        times.append(time.perf_counter() - t0)
        assert reply == {"status": "started"}, reply
        agent.shutdown_service(name)
        wait_gone(agent, f"service:{name}")
    return times


def children(agent: AgentClient) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in agent.status()["kernel_runner"]["children"]}


def wait_gone(agent: AgentClient, child_id: str) -> None:
    """Until the child is stopped: gone, or a STOPPED row (shutdown-service keeps one, docs/operations.md §1.3)."""
    deadline = time.monotonic() + 10
    while (row := children(agent).get(child_id)) is not None and row["state"] != "STOPPED":
        if time.monotonic() > deadline:
            raise TimeoutError(child_id)


def restart_times(agent: AgentClient) -> list[float]:
    port = free_port()
    assert agent.start_service({"name": "listener", "port": port, "ports": [port], "protocol": "tcp"})["status"] == "started"
    times = []
    for _ in range(ROUNDS):
        pid = children(agent)["service:listener"]["pid"]
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            child = children(agent).get("service:listener")
            if child and child["state"] == "RUNNING" and child["pid"] not in (None, pid):
                break
            if time.perf_counter() - t0 > 20:
                raise TimeoutError(f"no restart after SIGKILL: {child}")
        times.append(time.perf_counter() - t0)
    agent.shutdown_service("listener")
    wait_gone(agent, "service:listener")
    return times


def status_times(agent: AgentClient, rounds: int = 300) -> list[float]:
    """The reply is not decoded: a client's msgpack decoding of 100 rows is not the runner's time."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        agent.send("status")
        agent.expect("status")
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    silence_logs()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bare = bare_start_times()
        # 100 definitions of one small listener, so each of the 100 services is its own supervised child.
        write_definitions(tmp / "defs", MANY)
        handle, agent = make_runner(tmp)
        try:
            runner = runner_start_times(agent)
            print("start figures done", file=sys.stderr)
            restarts = restart_times(agent)
            print("restart figures done", file=sys.stderr)
            status_empty = status_times(agent)
            rss_before = psutil.Process().memory_info().rss
            ports = [free_port() for _ in range(MANY)]
            for index, port in enumerate(ports):
                agent.send("start-service", json.dumps({"name": f"l{index}", "port": port, "protocol": "tcp"}))
            replies = [agent.expect("service-result", timeout=60).json() for _ in ports]
            assert all(r == {"status": "started"} for r in replies), replies[:3]
            rss_after = psutil.Process().memory_info().rss
            status_many = status_times(agent)
        finally:
            agent.close()
            handle.stop(timeout=30)
    med = statistics.median
    print(machine_line())
    print(f"start-service → started   median {med(runner) * 1e3:7.1f} ms   bare spawn+port {med(bare) * 1e3:7.1f} ms   "
          f"ratio {med(runner) / med(bare):.2f}x")
    print(f"restart after SIGKILL     median {med(restarts) * 1e3:7.1f} ms   (backoff 0; vs bare spawn+port "
          f"{med(bare) * 1e3:.1f} ms of a heavier server)")
    print(f"status round trip         100 services {med(status_many) * 1e6:7.1f} us   none {med(status_empty) * 1e6:7.1f} us   "
          f"ratio {med(status_many) / med(status_empty):.2f}x")
    print(f"RSS per supervised service {(rss_after - rss_before) / MANY / 1024:.1f} KiB (runner process, 100 services)")


if __name__ == "__main__":
    main()
