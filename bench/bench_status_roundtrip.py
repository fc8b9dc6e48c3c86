"""`status` round trip through the runner vs a raw pyzmq PUSH/PULL echo thread, in the same run (a ratio).

Both servers run side by side, each in its own process: the runner as `python -m kernel_runner`, as the agent meets
it; the echo as one plain pyzmq thread. They are measured in alternating blocks with the same bare client
(common.RawAgent), so load on the machine falls on both alike and only the server side differs. Target: at most 1.2x.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from common import RawAgent, RunnerProcess, machine_line, median_p99, silence_logs

BLOCKS = 20
ROUNDS_PER_BLOCK = 100
WARMUP = 200
STATUS = [b"status", b""]


ECHO = """
import sys, zmq
ctx = zmq.Context.instance()
pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
print(pull.bind_to_random_port("tcp://127.0.0.1"), push.bind_to_random_port("tcp://127.0.0.1"), flush=True)
poller = zmq.Poller()
poller.register(pull, zmq.POLLIN)
while True:
    if poller.poll(100):
        push.send_multipart(pull.recv_multipart())
"""


class EchoServer:
    """The floor: a process whose one thread PULLs and PUSHes back each message, no decoding, no actors."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", ECHO], stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        self.port_in, self.port_out = map(int, self._proc.stdout.readline().split())

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(timeout=10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()


def main() -> None:
    silence_logs()
    echo = EchoServer()
    with tempfile.TemporaryDirectory() as tmp:
        runner_process = RunnerProcess("app", Path(tmp))
        raw_client = RawAgent(echo.port_in, echo.port_out)
        runner_client = RawAgent(runner_process.port_in, runner_process.port_out)
        try:
            raw_client.round_trips(STATUS, WARMUP)
            runner_client.round_trips(STATUS, WARMUP)
            raw: list[float] = []
            runner: list[float] = []
            for _ in range(BLOCKS):
                raw += raw_client.round_trips(STATUS, ROUNDS_PER_BLOCK)
                runner += runner_client.round_trips(STATUS, ROUNDS_PER_BLOCK)
        finally:
            raw_client.close()
            runner_client.close()
            runner_process.stop()
            echo.close()
    raw_med, raw_p99 = median_p99(raw)
    run_med, run_p99 = median_p99(runner)
    print(machine_line())
    print(f"raw zmq echo     median {raw_med * 1e6:8.1f} us   p99 {raw_p99 * 1e6:8.1f} us")
    print(f"runner status    median {run_med * 1e6:8.1f} us   p99 {run_p99 * 1e6:8.1f} us")
    print(f"ratio (median)   {run_med / raw_med:.2f}x   (target <= 1.2x)")


if __name__ == "__main__":
    main()
