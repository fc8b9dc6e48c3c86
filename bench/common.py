"""What every benchmark script shares: quiet logs, the machine line for RESULTS.md, median and p99 of samples."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence

from loguru import logger

from kernel_runner.logs import configure_logging


def silence_logs() -> None:
    """Route stdlib logging into loguru, then drop every sink: log formatting must not be what is measured."""
    configure_logging(debug=False, json_lines=False)
    logger.remove()


def machine_line() -> str:
    return (f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
            f"python {platform.python_version()}")


def median_p99(samples: Sequence[float]) -> tuple[float, float]:
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


class RawAgent:
    """The agent side at its barest (PUSH/PULL, no decoding), so a round trip measures the server alone."""

    def __init__(self, port_in: int, port_out: int) -> None:
        import zmq

        ctx = zmq.Context.instance()
        self._push, self._pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        self._push.connect(f"tcp://127.0.0.1:{port_in}")
        self._pull.connect(f"tcp://127.0.0.1:{port_out}")

    def round_trips(self, frames: list[bytes], rounds: int) -> list[float]:
        import time

        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            self._push.send_multipart(frames)
            self._pull.recv_multipart()
            times.append(time.perf_counter() - t0)
        return times

    def close(self) -> None:
        self._push.close(linger=0)
        self._pull.close(linger=0)
