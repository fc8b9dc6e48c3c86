"""An agent that stops reading while a child floods stdout (tests/children/flood.py), and the checks on the far side:
the writer stalls, the runner's memory stays bounded, and once the agent reads again every byte arrives in order."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from tests.conftest import CHILDREN
from tests.support.waiting import wait_until

FLOOD = CHILDREN / "flood.py"
MIB = 1024 * 1024


class StalledAgent:
    """An agent that stopped reading: its PULL takes almost nothing (a 4-message queue, a small kernel buffer).

    No AgentClient beside it: the runner's PUSH would deal output to that one too, and it would absorb some."""

    def __init__(self, port_in: int, port_out: int) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.push = ctx.socket(zmq.PUSH)
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, 4)
        self.pull.setsockopt(zmq.RCVBUF, 64 * 1024)
        for sock in (self.push, self.pull):
            sock.setsockopt(zmq.LINGER, 0)
        self.push.connect(f"tcp://127.0.0.1:{port_in}")
        self.pull.connect(f"tcp://127.0.0.1:{port_out}")

    def start_flood(self, total: int, progress: Path) -> None:
        """`exec` a child that writes `total` bytes of the repeated bytes(range(256)), noting its progress."""
        self.push.send_multipart([b"exec", f"{sys.executable} {FLOOD} {total} {progress}".encode()])

    def recv(self, timeout: float) -> tuple[bytes, bytes]:
        assert self.pull.poll(int(timeout * 1000)), f"nothing from the runner within {timeout:g}s"
        kind, payload = self.pull.recv_multipart()
        return kind, payload

    def close(self) -> None:
        self.push.close()
        self.pull.close()


def wait_for_stalled_writer(progress: Path, rss: Callable[[], int], *, timeout: float) -> tuple[int, int]:
    """Wait until flood.py stops advancing (blocked on its full pipe); returns (bytes written, peak RSS meanwhile)."""

    def written() -> int:
        try:
            return int(progress.read_text() or 0)
        except (OSError, ValueError):
            return 0

    peak = [rss()]
    history: list[int] = []

    def stalled() -> bool:
        peak[0] = max(peak[0], rss())
        history.append(written())
        # Unchanged over 50 checks 10 ms apart after it got going: the writer is blocked on its full pipe.
        return len(history) > 50 and history[-1] > 0 and history[-1] == history[-50]

    wait_until(stalled, timeout=timeout, what="the writer to stall")
    return written(), peak[0]


def read_flood_to_the_end(agent: StalledAgent, *, message_timeout: float, total_timeout: float | None = None) -> int:
    """Read until `finished`: each stdout record (≤ 1 MiB) must continue the repeated bytes(range(256)) exactly where
    the stream stands, and the run must end with exit code 0. Each message must come within `message_timeout`, and
    with `total_timeout` all of them within that. Returns the bytes received."""
    pattern = bytes(range(256)) * (MIB // 256 + 2)
    received = 0
    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    while True:
        left = message_timeout if deadline is None else min(message_timeout, max(0.0, deadline - time.monotonic()))
        kind, payload = agent.recv(timeout=left)
        if kind == b"stdout":
            offset = received % 256
            assert len(payload) <= MIB and payload == pattern[offset: offset + len(payload)], (
                f"stdout out of order or altered at byte {received}")
            received += len(payload)
        elif kind == b"finished":
            assert payload == b'{"exitCode": 0}'
            return received
        else:
            raise AssertionError(f"unexpected {kind!r} {payload[:120]!r}")
