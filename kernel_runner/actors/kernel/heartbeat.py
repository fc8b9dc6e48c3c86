"""KernelHeartbeat: the channel thread's watch on the kernel's heartbeat socket (docs/protocol.md §4.7).

It pings, reads the echoes and judges, by HeartbeatWatch's schedule (jupyter.py), whether the kernel is stopped or
hung. It belongs to KernelChannels: only that thread calls it, and the socket stays the thread's (it closes it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import zmq

from kernel_runner.actors.kernel.jupyter import BEATS_WHILE_BUSY, HeartbeatWatch

if TYPE_CHECKING:
    from loguru import Logger


class KernelHeartbeat:
    """Pings while the kernel answers; says once, with how long it was silent, when it stopped answering."""

    def __init__(self, sock: zmq.Socket[bytes], *, implementation: str, interval_s: float, timeout_s: float,
                 idle_interval_s: float, log: Logger) -> None:
        self._sock = sock
        # A kernel that echoes from its main loop cannot while it runs a cell: only its idle silence counts.
        self._beats_while_busy = implementation.lower() in BEATS_WHILE_BUSY
        self._watch = HeartbeatWatch.starting(time.monotonic(), interval_s=interval_s, timeout_s=timeout_s,
                                              idle_interval_s=idle_interval_s)
        log.info(
            "heartbeat: a ping every {:g} s while a cell runs, every {:g} s while idle; hung after {:g} s without an "
            "echo ({})", interval_s, self._watch.idle_interval_s, timeout_s,
            "also while a cell runs" if self._beats_while_busy else f"between cells only: {implementation or '?'} "
            "echoes from its main loop",
        )

    def paused(self, busy: bool) -> bool:
        return busy and not self._beats_while_busy

    def next_due(self) -> float:
        return self._watch.next_due()

    def run_started(self) -> None:
        """docs/protocol.md §4.7: idle pings are rare; a run is watched from its start."""
        self._watch.run_started(time.monotonic())

    def beat(self, busy: bool) -> float | None:
        """Read the echoes (also those that came while the thread was blocked on output), then judge, then ping.
        Returns how long the kernel has been silent once it counts as lost (the caller stops watching then)."""
        watch = self._watch
        while True:
            try:
                self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            watch.echoed()
        now = time.monotonic()
        if self.paused(busy):
            watch.pause(now)
            return None
        if watch.is_lost(now):
            return watch.silent_for(now)
        if watch.ping_due(now):
            try:
                # The empty frame is REQ's envelope: a kernel's REP socket (IRkernel) needs it, a ROUTER echo keeps it.
                self._sock.send_multipart([b"", b"ping"], zmq.NOBLOCK)
            except zmq.Again:
                pass  # the kernel is not reading pings: the one outstanding already says so
            watch.pinged(now, idle=not busy)
        return None


__all__ = ["KernelHeartbeat"]
