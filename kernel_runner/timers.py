"""Ticker: one heap-based scheduler thread that tells actors a message at a deadline (pykka has no timers)."""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import Any

import pykka
from loguru import logger

from kernel_runner.clock import REAL_CLOCK, Clock
from kernel_runner.refs import tell_if_alive


class TimerHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Ticker:
    """Delivers scheduled messages by `tell`, so handlers never sleep to wait for time to pass."""

    def __init__(self, clock: Clock = REAL_CLOCK) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, TimerHandle, pykka.ActorRef[Any], object]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="Ticker", daemon=True)
        self._thread.start()

    def schedule(self, delay_s: float, target: pykka.ActorRef[Any], message: object) -> TimerHandle:
        handle = TimerHandle()
        with self._cond:
            deadline = self._clock.monotonic() + max(0.0, delay_s)
            heapq.heappush(self._heap, (deadline, next(self._seq), handle, target, message))
            self._cond.notify()
        return handle

    def stop(self, timeout: float = 1.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, handle, target, message = self._heap[0]
                remaining = deadline - self._clock.monotonic()
                if remaining > 0:
                    self._cond.wait(timeout=remaining)
                    continue
                heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            if not tell_if_alive(target, message):
                logger.bind(child="ticker").debug("dropped {} for a stopped actor", type(message).__name__)
