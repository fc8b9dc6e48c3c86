"""Batch stdout throughput: 100 MiB through the runner to an agent vs a bare pipe read of the same producer.

Both sides run the same command (`head -c 100 MiB /dev/zero`); the baseline reads its pipe with 64 KiB `os.read`
calls in this process. The runner runs as its own process, as the agent meets it (in this process its threads
would share the GIL with the reader), and the agent side reads the way the baseline does: a bare PULL socket, each
record received once into memory (`copy=False`), no decoding. The two alternate round by round, so load on the
machine falls on both alike.

The runner's path has costs the bare read has not, whatever the runner does: every byte crosses a TCP connection
(a copy into the socket, one out of it) and two more processes' threads (ZeroMQ's I/O threads) share the two cores.
`FLOOR` measures that part alone: a minimal Python forwarder in its own process (blocking 1 MiB pipe reads, each sent
at once on a ZeroMQ PUSH socket; the pipe widened to 1 MiB as the runner does), read the same way.
"""

from __future__ import annotations

import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from common import RunnerProcess, machine_line, silence_logs

MIB = 1024 * 1024
TOTAL = 100 * MIB
ROUNDS = 7
COMMAND = f"head -c {TOTAL} /dev/zero"
FORWARDER = "forwarder"


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


class RawPull:
    """The agent side at its barest: PUSH a request, PULL records without decoding them."""

    def __init__(self, port_in: int, port_out: int) -> None:
        ctx: zmq.Context[Any] = zmq.Context.instance()
        self.push: zmq.Socket[bytes] = ctx.socket(zmq.PUSH)
        self.pull: zmq.Socket[bytes] = ctx.socket(zmq.PULL)
        self.push.connect(f"tcp://127.0.0.1:{port_in}")
        self.pull.connect(f"tcp://127.0.0.1:{port_out}")

    def rate(self, request: list[bytes]) -> tuple[float, int]:
        """MiB/s of one run's stdout, and the largest record."""
        t0 = time.perf_counter()
        self.push.send_multipart(request)
        got = largest = 0
        while True:
            kind, payload = self.pull.recv_multipart(copy=False)
            if kind.bytes == b"stdout":
                got += len(payload)
                largest = max(largest, len(payload))
            elif kind.bytes == b"finished":
                break
        assert got == TOTAL, got
        return got / MIB / (time.perf_counter() - t0), largest

    def close(self) -> None:
        self.push.close(linger=0)
        self.pull.close(linger=0)


def forward() -> None:
    """FLOOR: for each request, run COMMAND and send its pipe's reads at once, then `finished`."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    ports = pull.bind_to_random_port("tcp://127.0.0.1"), push.bind_to_random_port("tcp://127.0.0.1")
    print(*ports, flush=True)
    while pull.recv_multipart()[0] != b"quit":
        proc = subprocess.Popen(["sh", "-c", COMMAND], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, MIB)  # as the runner does: fewer, bigger reads
        while data := os.read(fd, MIB):
            push.send_multipart([b"stdout", data], copy=False)
        proc.wait()
        proc.stdout.close()
        push.send_multipart([b"finished", b'{"exitCode": 0}'])


def start_forwarder() -> tuple[subprocess.Popen[bytes], RawPull]:
    proc = subprocess.Popen([sys.executable, __file__, FORWARDER], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    port_in, port_out = map(int, proc.stdout.readline().split())
    return proc, RawPull(port_in, port_out)


def measure() -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"bare": [], "runner": [], "floor": [], "largest": []}
    with tempfile.TemporaryDirectory() as tmp:
        runner = RunnerProcess("c", Path(tmp))
        forwarder, floor = start_forwarder()
        agent = RawPull(runner.port_in, runner.port_out)
        try:
            agent.push.send_multipart([b"status", b""])
            agent.pull.recv_multipart()
            for _ in range(ROUNDS):
                rates["bare"].append(bare_rate())
                rate, largest = agent.rate([b"exec", COMMAND.encode()])
                rates["runner"].append(rate)
                rates["largest"].append(largest)
                rates["floor"].append(floor.rate([b"exec", b""])[0])
        finally:
            agent.close()
            floor.push.send_multipart([b"quit", b""])
            floor.close()
            forwarder.wait(timeout=30)
            assert forwarder.stdout is not None
            forwarder.stdout.close()
            runner.stop()
    return rates


def main() -> None:
    silence_logs()
    rates = measure()
    bare, runner, floor = (statistics.median(rates[key]) for key in ("bare", "runner", "floor"))
    print(machine_line())
    print(f"bare pipe read (64 KiB os.read)        median {bare:8.0f} MiB/s")
    print(f"runner batch stdout to the agent       median {runner:8.0f} MiB/s  (largest record {max(rates['largest']):.0f} B)")
    print(f"FLOOR: minimal pipe→PUSH forwarder     median {floor:8.0f} MiB/s")
    print(f"ratio (median)   {runner / bare:.2f}x of the bare pipe; floor {floor / bare:.2f}x; runner {runner / floor:.2f}x "
          "of the floor")


if __name__ == "__main__":
    if sys.argv[1:2] == [FORWARDER]:
        forward()
    else:
        main()
