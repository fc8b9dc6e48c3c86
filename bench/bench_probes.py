"""Health probes of services (docs/protocol.md §6.14), each figure beside its bound or its baseline from the same run.

1. Hang → restart. A service (tests/children/health_server.py) with an HTTP liveness probe (period 1 s, timeout
   0.5 s, 3 failures) starts answering nothing (its control file says `hang`; its port still accepts). Measured
   from writing `hang` to the supervisor's restart (its restart count going up), and to the new process RUNNING,
   beside the declared bound period × threshold + timeout (the first failing probe comes within one period of the
   hang, the threshold-th one (threshold − 1) periods later, and takes the timeout to fail). Backoff 0, so the
   second figure is the runner's own restart work.
2. Idle CPU. The runner as its own process (`python -m kernel_runner`, bench/common.py RunnerProcess), with 20
   services whose definitions have a TCP liveness probe (Kubernetes' defaults: every 10 s), beside the same runner
   with 20 services without probes and with none at all, in alternating blocks. CPU time of the runner process only
   (its services are other processes), from /proc/<pid>/task/*/schedstat, as bench_idle.py takes it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
from bench_idle import schedstat
from common import RunnerProcess, machine_line, silence_logs

from kernel_runner import RunnerConfig, start
from kernel_runner.client import AgentClient
from kernel_runner.config import RestartDefaults

SERVER = Path(__file__).resolve().parent.parent / "tests" / "children" / "health_server.py"
PERIOD_S, TIMEOUT_S, THRESHOLD = 1.0, 0.5, 3
HANG_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
IDLE_ROUNDS = int(os.environ.get("BENCH_IDLE_ROUNDS", "3"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "20"))
SETTLE_S = 3.0
SERVICES = 20
LISTENER = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(8)\n"
    "while True: s.accept()[0].close()\n"
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- 1. hang → restart --------------------------------------------------------------------------------------------


def hang_to_restart(tmp: Path) -> list[tuple[float, float]]:
    """(seconds to the restart, seconds to RUNNING again) per round."""
    defs, control = tmp / "defs", tmp / "control"
    defs.mkdir()
    control.write_text("")
    liveness = {"http": {"path": "/health", "expected_status": 200}, "period_s": PERIOD_S, "timeout_s": TIMEOUT_S,
                "failure_threshold": THRESHOLD}
    (defs / "web.json").write_text(json.dumps({
        "command": [sys.executable, str(SERVER), "{ports[0]}", "--control", str(control)],
        "probes": {"liveness": liveness}}))
    config = RunnerConfig(
        lang="app", bind="127.0.0.1", port_in=0, port_out=0, config_dir=tmp, work_dir=tmp, service_defs_dir=defs,
        start_intrinsic_services=False, user_input_socket=tmp / "in.sock",
        restart=attrs.evolve(RestartDefaults(), backoff_initial_s=0.0, backoff_jitter=0.0, intensity_max_restarts=1000),
    )
    handle = start(config)
    agent = AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out)
    rounds = []
    try:
        port = free_port()
        assert agent.start_service({"name": "web", "port": port, "ports": [port], "protocol": "http"}) == \
            {"status": "started"}
        for _ in range(HANG_ROUNDS):
            web = row(handle)
            restarts, pid = web.restarts, web.pid
            time.sleep(PERIOD_S * 1.5)  # a few passing probes first: the hang meets a steady schedule
            control.write_text("hang")
            t0 = time.perf_counter()
            while row(handle).restarts == restarts:
                check(t0)
            detected = time.perf_counter() - t0
            control.write_text("")
            while (web := row(handle)).state.value != "RUNNING" or web.pid in (None, pid):
                check(t0)
            rounds.append((detected, time.perf_counter() - t0))
    finally:
        agent.close()
        handle.stop(timeout=30)
    return rounds


def row(handle: Any) -> Any:
    return next(c for c in handle.which_children() if c.child_id == "service:web")


def check(t0: float) -> None:
    if time.perf_counter() - t0 > 60:
        raise TimeoutError("no restart within 60 s")
    time.sleep(0.002)  # the measuring client's poll


# ---- 2. idle CPU ------------------------------------------------------------------------------------------------


def write_idle_definitions(defs: Path) -> None:
    defs.mkdir(exist_ok=True)
    command = [sys.executable, "-c", LISTENER, "{ports[0]}"]
    for index in range(SERVICES):
        (defs / f"plain{index}.json").write_text(json.dumps({"command": command}))
        (defs / f"probed{index}.json").write_text(json.dumps({"command": command, "probes": {"liveness": {"tcp": {}}}}))


def idle_block(root: Path, kind: str) -> tuple[float, int]:
    """One runner from launch to stop, with SERVICES services of `kind` ("none", "plain", "probed"): (cpu s, wakeups)
    of the runner process over IDLE_S."""
    runner = RunnerProcess("app", root)
    agent = AgentClient(port_in=runner.port_in, port_out=runner.port_out)
    try:
        agent.status(timeout=30)
        if kind != "none":
            for index in range(SERVICES):
                port = free_port()
                agent.send("start-service", json.dumps({"name": f"{kind}{index}", "port": port, "protocol": "tcp"}))
            replies = [agent.expect("service-result", timeout=60).json() for _ in range(SERVICES)]
            assert all(reply == {"status": "started"} for reply in replies), replies[:3]
        time.sleep(SETTLE_S)  # start-up's own timers are not idleness
        before = schedstat(runner.proc.pid)
        time.sleep(IDLE_S)
        after = schedstat(runner.proc.pid)
        return after[0] - before[0], after[1] - before[1]
    finally:
        agent.close()
        runner.stop()


def main() -> None:
    silence_logs()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp_name:
        rounds = hang_to_restart(Path(tmp_name))
    bound = PERIOD_S * THRESHOLD + TIMEOUT_S
    detected = [d for d, _ in rounds]
    running = [r for _, r in rounds]
    print(f"hang → restart (period {PERIOD_S:g} s × {THRESHOLD} + timeout {TIMEOUT_S:g} s = bound {bound:g} s), "
          f"{HANG_ROUNDS} rounds: median {statistics.median(detected):.3f} s [{min(detected):.3f}-{max(detected):.3f}], "
          f"within the bound: {'yes' if max(detected) <= bound else 'NO'}; running again: median "
          f"{statistics.median(running):.3f} s [{min(running):.3f}-{max(running):.3f}]")
    results: dict[str, list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        root = Path(tmp_name)
        write_idle_definitions(root / "defs")
        for _ in range(IDLE_ROUNDS):
            for kind in ("none", "plain", "probed"):
                results.setdefault(kind, []).append(idle_block(root, kind))
    cpu = {kind: [c * 1000 for c, _ in figures] for kind, figures in results.items()}
    print(f"runner CPU over {IDLE_S:g} s idle ({IDLE_ROUNDS} blocks each, alternating; ms [range], wake-ups median):")
    for kind, label in (("none", "no services"), ("plain", f"{SERVICES} services, no probes"),
                        ("probed", f"{SERVICES} services, TCP liveness every 10 s")):
        wakes = statistics.median(w for _, w in results[kind])
        print(f"  {label:38s} {statistics.median(cpu[kind]):7.2f} ms [{min(cpu[kind]):.2f}-{max(cpu[kind]):.2f}], "
              f"{wakes:.0f} wake-ups")
    base = statistics.median(cpu["none"])
    plain = statistics.median(cpu["plain"])
    probed = statistics.median(cpu["probed"])
    print(f"  probed / none {probed / base:.2f}x (+{probed - base:.2f} ms); probed / no probes {probed / plain:.2f}x "
          f"(+{probed - plain:.2f} ms, {(probed - plain) / (SERVICES * IDLE_S / 10):.3f} ms per probe)")


if __name__ == "__main__":
    main()
