"""`exec true` round trip through the runner vs a bare `subprocess.run(["sh", "-c", "true"])`, in the same run.

The runner's round trip is agent → PULL (AgentLink) → language runner → spawn (new session, one ProcessWatcher)
→ `finished` → PUSH → agent, measured with the bare client (common.RawAgent: `true` prints nothing, so `finished`
is the one reply). The runner runs as its own process (`python -m kernel_runner`, as the agent meets it), and the
two are measured in alternating blocks, so load on the machine falls on both alike.
Target: at most 1.8x.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from common import RawAgent, RunnerProcess, machine_line, median_p99, silence_logs

BLOCKS = 15
ROUNDS_PER_BLOCK = 20
WARMUP = 30
EXEC_TRUE = [b"exec", b"true"]


def bare_round_trips(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", "true"], check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    silence_logs()
    with tempfile.TemporaryDirectory() as tmp:
        runner_process = RunnerProcess("c", Path(tmp))
        agent = RawAgent(runner_process.port_in, runner_process.port_out)
        try:
            agent.round_trips([b"status", b""], 1)  # answered once bootstrap is done: the runner is ready
            bare_round_trips(WARMUP)
            agent.round_trips(EXEC_TRUE, WARMUP)
            bare: list[float] = []
            runner: list[float] = []
            for _ in range(BLOCKS):
                bare += bare_round_trips(ROUNDS_PER_BLOCK)
                runner += agent.round_trips(EXEC_TRUE, ROUNDS_PER_BLOCK)
        finally:
            agent.close()
            runner_process.stop()
    bare_med, bare_p99 = median_p99(bare)
    run_med, run_p99 = median_p99(runner)
    print(machine_line())
    print(f"bare subprocess.run(sh -c true)  median {bare_med * 1e3:7.2f} ms   p99 {bare_p99 * 1e3:7.2f} ms")
    print(f"runner exec true round trip      median {run_med * 1e3:7.2f} ms   p99 {run_p99 * 1e3:7.2f} ms")
    print(f"ratio (median)   {run_med / bare_med:.2f}x   (target <= 1.8x)")


if __name__ == "__main__":
    main()
