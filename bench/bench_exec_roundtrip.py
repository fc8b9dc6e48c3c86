"""`exec true` round trip through the runner vs a bare `subprocess.run(['sh', '-c', 'true'])`, in the same run.

The runner's round trip is agent → PULL → router → supervisor → language runner → spawn (new session, two
pipe pumps, an exit watcher) → `finished` → PUSH → agent. Target: at most 3× the bare spawn.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from common import machine_line, median_p99, silence_logs

from kernel_runner import RunnerConfig, start
from kernel_runner.client import AgentClient

ROUNDS = 300
WARMUP = 30


def bare_round_trips() -> list[float]:
    times = []
    for i in range(ROUNDS + WARMUP):
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", "true"], check=True)
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    return times


def runner_round_trips() -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = RunnerConfig(lang="c", bind="127.0.0.1", port_in=0, port_out=0, config_dir=root, work_dir=root,
                              service_defs_dir=root / "defs", user_input_socket=root / "input.sock",
                              start_intrinsic_services=False)
        handle = start(config)
        try:
            with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as client:
                client.status(timeout=30)
                times = []
                for i in range(ROUNDS + WARMUP):
                    t0 = time.perf_counter()
                    result = client.run("exec", "true")
                    if i >= WARMUP:
                        times.append(time.perf_counter() - t0)
                    assert result.exit_code == 0
                return times
        finally:
            handle.stop(timeout=5)


def main() -> None:
    silence_logs()
    bare = bare_round_trips()
    runner = runner_round_trips()
    bare_med, bare_p99 = median_p99(bare)
    run_med, run_p99 = median_p99(runner)
    print(machine_line())
    print(f"bare subprocess.run(sh -c true)  median {bare_med * 1e3:7.2f} ms   p99 {bare_p99 * 1e3:7.2f} ms")
    print(f"runner exec true round trip      median {run_med * 1e3:7.2f} ms   p99 {run_p99 * 1e3:7.2f} ms")
    print(f"ratio (median)   {run_med / bare_med:.2f}x   (target <= 3x)")


if __name__ == "__main__":
    main()
