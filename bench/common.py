"""What every benchmark script shares: quiet logs, the machine line for RESULTS.md, median and p99 of samples."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from kernel_runner.observability.logs import configure_logging


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


class RunnerProcess:
    """`python -m kernel_runner` as its own process, as the agent meets it: its threads do not share this process's GIL
    with the measuring client (an in-process runner would slow the client and the runner down alike)."""

    def __init__(self, lang: str, root: Path, *extra: str) -> None:
        import subprocess
        import sys

        (root / "work").mkdir(exist_ok=True)
        self.log_path = root / "runner.log"
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "kernel_runner", lang, "--bind", "127.0.0.1", "--port-in", "0", "--port-out",
                "0", "--config-dir", str(root), "--work-dir", str(root / "work"), "--service-defs-dir",
                str(root / "defs"), "--user-input-socket", str(root / "input.sock"), "--no-intrinsic-services", *extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log)
        assert self.proc.stdout is not None
        ports = []
        while len(ports) < 2:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"the runner ended before binding; see {self.log_path}")
            if line.startswith("binding to tcp://"):
                ports.append(int(line.rsplit(":", 1)[1]))
        self.port_in, self.port_out = ports

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()
