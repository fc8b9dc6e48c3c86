"""Batch stdout throughput: 100 MiB through the runner to an agent vs a bare pipe read of the same producer.

Both sides run the same command (`head -c 100 MiB /dev/zero`); the baseline reads its pipe with 64 KiB `os.read`
calls in this process. The two alternate round by round, so load on the machine falls on both alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import machine_line, silence_logs

from kernel_runner import RunnerConfig, start
from kernel_runner.client import AgentClient

MIB = 1024 * 1024
TOTAL = 100 * MIB
ROUNDS = 7
COMMAND = f"head -c {TOTAL} /dev/zero"


def bare_rate() -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(["sh", "-c", COMMAND], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    got = 0
    while chunk := os.read(proc.stdout.fileno(), 64 * 1024):
        got += len(chunk)
    proc.wait()
    proc.stdout.close()
    assert got == TOTAL
    return got / MIB / (time.perf_counter() - t0)


def runner_rate(client: AgentClient) -> float:
    t0 = time.perf_counter()
    client.send("exec", COMMAND)
    got = 0
    while True:
        reply = client.recv(timeout=60)
        if reply.type == "stdout":
            got += len(reply.payload)
        elif reply.type == "finished":
            break
    assert got == TOTAL
    return got / MIB / (time.perf_counter() - t0)


def measure() -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = RunnerConfig(lang="c", bind="127.0.0.1", port_in=0, port_out=0, config_dir=root, work_dir=root,
                              service_defs_dir=root / "defs", user_input_socket=root / "input.sock",
                              start_intrinsic_services=False)
        handle = start(config)
        try:
            with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as client:
                client.status(timeout=30)
                bare, runner = [], []
                for _ in range(ROUNDS):
                    bare.append(bare_rate())
                    runner.append(runner_rate(client))
                return bare, runner
        finally:
            handle.stop(timeout=5)


def main() -> None:
    silence_logs()
    bare_all, runner_all = measure()
    bare, runner = statistics.median(bare_all), statistics.median(runner_all)
    print(machine_line())
    print(f"bare pipe read (64 KiB os.read)    median {bare:8.0f} MiB/s")
    print(f"runner batch stdout to the agent   median {runner:8.0f} MiB/s")
    print(f"ratio (median)   {runner / bare:.2f}x of the bare pipe")


if __name__ == "__main__":
    main()
