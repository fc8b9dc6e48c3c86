"""`status` round trip through the runner vs a raw pyzmq PUSH/PULL echo, in the same run (ratio, not seconds)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import zmq
from common import machine_line, median_p99, silence_logs

from kernel_runner import RunnerConfig, start
from kernel_runner.client import AgentClient

ROUNDS = 2000
WARMUP = 200


def raw_echo_round_trips() -> list[float]:
    """The floor: a thread that PULLs and PUSHes back each message, no decoding, no actors."""
    ctx = zmq.Context.instance()
    server_in, server_out = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port_in = server_in.bind_to_random_port("tcp://127.0.0.1")
    port_out = server_out.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def echo() -> None:
        poller = zmq.Poller()
        poller.register(server_in, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(100):
                server_out.send_multipart(server_in.recv_multipart())

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.connect(f"tcp://127.0.0.1:{port_in}")
    pull.connect(f"tcp://127.0.0.1:{port_out}")
    times = []
    for i in range(ROUNDS + WARMUP):
        t0 = time.perf_counter()
        push.send_multipart([b"status", b""])
        pull.recv_multipart()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    stop.set()
    thread.join()
    for sock in (push, pull, server_in, server_out):
        sock.close(linger=0)
    return times


def runner_round_trips() -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = RunnerConfig(lang="app", bind="127.0.0.1", port_in=0, port_out=0, config_dir=Path(tmp),
                              work_dir=Path(tmp), service_defs_dir=Path(tmp) / "defs", start_intrinsic_services=False)
        handle = start(config)
        try:
            with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as client:
                times = []
                for i in range(ROUNDS + WARMUP):
                    t0 = time.perf_counter()
                    client.status()
                    if i >= WARMUP:
                        times.append(time.perf_counter() - t0)
                return times
        finally:
            handle.stop(timeout=5)


def main() -> None:
    silence_logs()
    raw = raw_echo_round_trips()
    runner = runner_round_trips()
    raw_med, raw_p99 = median_p99(raw)
    run_med, run_p99 = median_p99(runner)
    print(machine_line())
    print(f"raw zmq echo     median {raw_med * 1e6:8.1f} us   p99 {raw_p99 * 1e6:8.1f} us")
    print(f"runner status    median {run_med * 1e6:8.1f} us   p99 {run_p99 * 1e6:8.1f} us")
    print(f"ratio (median)   {run_med / raw_med:.2f}x")


if __name__ == "__main__":
    main()
