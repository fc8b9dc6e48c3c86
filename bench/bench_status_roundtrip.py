"""`status` round trip through the runner vs a raw pyzmq PUSH/PULL echo thread, in the same run (a ratio).

Both servers run side by side and are measured in alternating blocks with the same bare client (common.RawAgent),
so load on the machine falls on both alike and only the server side differs. Target: at most 1.2x.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import zmq
from common import RawAgent, machine_line, median_p99, silence_logs

from kernel_runner import RunnerConfig, start

BLOCKS = 20
ROUNDS_PER_BLOCK = 100
WARMUP = 200
STATUS = [b"status", b""]


class EchoServer:
    """The floor: a thread that PULLs and PUSHes back each message, no decoding, no actors."""

    def __init__(self) -> None:
        ctx = zmq.Context.instance()
        self._in, self._out = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        self.port_in = self._in.bind_to_random_port("tcp://127.0.0.1")
        self.port_out = self._out.bind_to_random_port("tcp://127.0.0.1")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._echo, daemon=True)
        self._thread.start()

    def _echo(self) -> None:
        poller = zmq.Poller()
        poller.register(self._in, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(100):
                self._out.send_multipart(self._in.recv_multipart())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._in.close(linger=0)
        self._out.close(linger=0)


def main() -> None:
    silence_logs()
    echo = EchoServer()
    with tempfile.TemporaryDirectory() as tmp:
        config = RunnerConfig(lang="app", bind="127.0.0.1", port_in=0, port_out=0, config_dir=Path(tmp),
                              work_dir=Path(tmp), service_defs_dir=Path(tmp) / "defs", start_intrinsic_services=False,
                              user_input_socket=Path(tmp) / "input.sock")
        handle = start(config)
        raw_client = RawAgent(echo.port_in, echo.port_out)
        runner_client = RawAgent(handle.ports.port_in, handle.ports.port_out)
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
            handle.stop(timeout=5)
            echo.close()
    raw_med, raw_p99 = median_p99(raw)
    run_med, run_p99 = median_p99(runner)
    print(machine_line())
    print(f"raw zmq echo     median {raw_med * 1e6:8.1f} us   p99 {raw_p99 * 1e6:8.1f} us")
    print(f"runner status    median {run_med * 1e6:8.1f} us   p99 {run_p99 * 1e6:8.1f} us")
    print(f"ratio (median)   {run_med / raw_med:.2f}x   (target <= 1.2x)")


if __name__ == "__main__":
    main()
