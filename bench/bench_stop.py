"""SIGTERM → exit of a runner with 100 services, two model services and a kernel running a cell, against the same
runner with nothing started (`python`, kernel idle), in alternating blocks of the same run. The floor, in the same
blocks: SIGTERM to 100 bare listeners (each its own session, as services are) and the wait for all their exits.

The figure is from the signal to the process's exit as its parent sees it (wait), so it includes the tree's stop,
killing what is left below the runner and leaving the process. Target (issue 12, point 5): exit 0 within 1.0 s,
nothing left running, every port closed (checked after each loaded stop).
"""
from __future__ import annotations

import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine_line, silence_logs  # noqa: E402

from tests.support.ports import free_port, refused  # noqa: E402
from tests.support.runner_process import RunnerProcess  # noqa: E402

SERVICES = int(os.environ.get("BENCH_SERVICES", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CHILDREN = ROOT / "tests" / "children"


def stop_seconds(root: Path, *, loaded: bool) -> float:
    defs = {f"svc{i}": {"command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"]}
            for i in range(SERVICES)} if loaded else {}
    runner = RunnerProcess(root, "python", shutdown_deadline_s=15.0, service_defs=defs)
    try:
        agent = runner.agent()
        if agent.code("1", timeout=60).exit_code != 0:
            raise RuntimeError(f"the first cell failed; see {runner.log_path}")
        ports = []
        if loaded:
            for i in range(SERVICES):
                port = free_port()
                agent.start_service({"name": f"svc{i}", "port": port, "ports": [port], "protocol": "http",
                                     "options": {}}, timeout=30)
                ports.append(port)
            for i in range(2):
                port = free_port()
                health = {"path": "/health", "max_retries": 20, "max_wait_time": 1, "expected_status_code": 200}
                agent.start_model_service({"name": f"m{i}", "model_path": tempfile.gettempdir(), "service": {
                    "start_command": [sys.executable, str(CHILDREN / "health_server.py"), str(port)], "port": port,
                    "pre_start_actions": None, "health_check": health}}, timeout=60)
                ports.append(port)
            agent.send("code", "while True: pass")
            time.sleep(1.0)  # the cell is running
        runner.descendants()
        started = time.perf_counter()
        runner.proc.send_signal(signal.SIGTERM)
        code = runner.proc.wait(timeout=30)
        took = time.perf_counter() - started
        runner.assert_nothing_left()
        if code != 0 or not all(refused(port) for port in ports):
            raise RuntimeError(f"exit {code}, or a port still open; see {runner.log_path}")
        return took
    finally:
        runner.close()


def floor_seconds() -> float:
    """What the processes themselves take: one killpg each from here, then one poll on all their pidfds."""
    ports = [free_port() for _ in range(SERVICES)]
    procs = [subprocess.Popen([sys.executable, str(CHILDREN / "listener.py"), str(port)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in ports]
    pidfds: list[int] = []
    try:
        deadline = time.monotonic() + 60
        for port in ports:
            while refused(port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a listener did not open port {port}")
                time.sleep(0.01)
        pidfds = [os.pidfd_open(proc.pid) for proc in procs]
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        started = time.perf_counter()
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        pending = set(pidfds)
        while pending:
            for fd, _event in poller.poll(30_000):
                poller.unregister(fd)
                pending.discard(fd)
        return time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for fd in pidfds:
            os.close(fd)


def main() -> None:
    silence_logs()
    print(machine_line())
    loaded_name = f"{SERVICES} services + 2 models + busy kernel"
    floor_name = f"floor: SIGTERM to {SERVICES} bare listeners"
    results: dict[str, list[float]] = {"nothing started": [], loaded_name: [], floor_name: []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(ROUNDS):
            for loaded, name in ((False, "nothing started"), (True, loaded_name)):
                root = Path(tmp) / f"{n}-{loaded}"
                root.mkdir()
                results[name].append(stop_seconds(root, loaded=loaded))
            results[floor_name].append(floor_seconds())
    print(f"SIGTERM → exit, {ROUNDS} blocks each, alternating:")
    for name, samples in results.items():
        print(f"  {name:40s} median {statistics.median(samples):.3f} s (min {min(samples):.3f}, max {max(samples):.3f})")
    base, loaded_, floor = (statistics.median(v) for v in results.values())
    print(f"  loaded / nothing started: {loaded_ / base:.2f}x;  loaded / floor: {loaded_ / floor:.2f}x;  "
          f"loaded within 1.0 s: {'yes' if max(results[loaded_name]) <= 1.0 else 'NO'}")


if __name__ == "__main__":
    main()
