"""Ticker: one heap-based scheduler thread that tells actors a message at a deadline (pykka has no timers).

Every timer in the runner goes through it (restarts, stop graces, interrupts, probes), so it must outlive any bad
input: `schedule` refuses a delay that is not a number and clamps one that is out of range, a message that cannot be
delivered is logged and skipped, and a thread that dies anyway is replaced at once with the heap it left, under the
restart policy every supervised part has (docs/architecture.md §3.5).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

import pykka
from loguru import logger

from kernel_runner.observability.debug_lines import debug
from kernel_runner.supervision.clock import REAL_CLOCK, Clock
from kernel_runner.supervision.exits import Crashed
from kernel_runner.supervision.policy import Backoff, GiveUp, IntensityLimit, RestartTracker
from kernel_runner.supervision.refs import tell_if_alive

# A year: far enough to mean "never" for anything the runner times, and far from what a thread wait can take.
MAX_DELAY_S = 365 * 24 * 3600.0
# The scheduler thread is replaced at once when it dies, but more than this many deaths within a minute is a bug
# that replacing will not fix: the runner is told (it shuts down, like after any other give-up).
TICKER_INTENSITY = IntensityLimit(max_restarts=5, period_s=60.0)


class TimerHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def checked_delay(delay_s: float) -> float:
    """A delay the scheduler can wait for: negative is now, beyond MAX_DELAY_S (infinity too) is MAX_DELAY_S.

    Raises:
        ValueError: not a number of seconds (NaN, a string, None): a bug in the caller, reported to the caller.
    """
    try:
        delay = float(delay_s)
    except OverflowError:  # an int beyond any float: an infinite delay, one way or the other
        delay = math.inf if delay_s > 0 else -math.inf
    except (TypeError, ValueError):
        raise ValueError(f"a timer delay must be a number of seconds, got {delay_s!r}") from None
    if math.isnan(delay):
        raise ValueError("a timer delay must be a number of seconds, got NaN")
    return min(MAX_DELAY_S, max(0.0, delay))


class Ticker:
    """Delivers scheduled messages by `tell`, so handlers never sleep to wait for time to pass."""

    def __init__(self, clock: Clock = REAL_CLOCK, *, on_give_up: Callable[[str], None] | None = None) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, TimerHandle, pykka.ActorRef[Any], object]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._on_give_up = on_give_up
        self._gave_up = False
        self._restarts = RestartTracker(restart="permanent", backoff=Backoff(initial_s=0.0, cap_s=0.0, jitter=0.0),
                                        intensity=TICKER_INTENSITY, stable_after_s=TICKER_INTENSITY.period_s)
        self._started_at = clock.monotonic()
        self._thread = self._new_thread()

    @property
    def restarts(self) -> int:
        """How many times the scheduler thread was replaced (for tests and the log)."""
        return self._restarts.total_restarts

    @property
    def thread(self) -> threading.Thread:
        """The current scheduler thread (tests kill it; it is replaced)."""
        return self._thread

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def schedule(self, delay_s: float, target: pykka.ActorRef[Any], message: object) -> TimerHandle:
        """Tell `target` `message` after `delay_s` (see `checked_delay`); cancel it with the handle."""
        delay = checked_delay(delay_s)
        if delay == MAX_DELAY_S:  # the value itself is not logged: a huge int does not even convert to text
            logger.bind(child="ticker").warning("{} due in {:g}s or more; clamped to that", type(message).__name__, delay)
        handle = TimerHandle()
        with self._cond:
            heapq.heappush(self._heap, (self._clock.monotonic() + delay, next(self._seq), handle, target, message))
            if self._heap[0][2] is handle:  # due before any other: the thread must wait less; otherwise it need not wake
                self._cond.notify()
            thread = self._thread
        if not thread.is_alive():  # it died without its own report (see _run): nothing would ever fire
            self._replace(thread, "its thread was found dead")
        return handle

    def schedule_many(self, delay_s: float, jobs: list[tuple[pykka.ActorRef[Any], object]]) -> list[TimerHandle]:
        """`schedule` for many messages due together, with one wake-up of the scheduler thread instead of one each
        (the supervisor stops a whole tier at once: docs/architecture.md §3.2)."""
        delay = checked_delay(delay_s)
        handles = [TimerHandle() for _ in jobs]
        with self._cond:
            due = self._clock.monotonic() + delay
            for handle, (target, message) in zip(handles, jobs, strict=True):
                heapq.heappush(self._heap, (due, next(self._seq), handle, target, message))
            self._cond.notify()
            thread = self._thread
        if not thread.is_alive():
            self._replace(thread, "its thread was found dead")
        return handles

    def stop(self, timeout: float = 1.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        thread.join(timeout=timeout)

    # ---- the scheduler thread ---------------------------------------------------------------------------------------
    def _new_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="Ticker", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                due = self._next_due()
                if due is None:
                    return
                self._deliver(*due)
        except BaseException as exc:  # noqa: BLE001 - whatever ends this thread, the timers must keep firing
            self._replace(me, f"its thread died: {exc!r}")

    def _next_due(self) -> tuple[pykka.ActorRef[Any], object] | None:
        """Wait for the earliest timer that is not cancelled; None once the ticker is stopping."""
        while True:
            with self._cond:
                if self._stopping:
                    return None
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, handle, target, message = self._heap[0]
                remaining = deadline - self._clock.monotonic()
                if remaining > 0:
                    self._cond.wait(timeout=min(remaining, MAX_DELAY_S))
                    continue
                heapq.heappop(self._heap)
            if not handle.cancelled:
                return target, message

    def _deliver(self, target: pykka.ActorRef[Any], message: object) -> None:
        try:
            delivered = tell_if_alive(target, message)
        except Exception as exc:  # noqa: BLE001 - a bad target costs its own timer, never the others
            logger.bind(child="ticker").opt(exception=exc).error("could not deliver {}: {!r}", type(message).__name__, exc)
            return
        if not delivered:
            debug(logger.bind(child="ticker"), "dropped {} for a stopped actor", type(message).__name__)

    def _replace(self, dead: threading.Thread, why: str) -> None:
        """Start a new scheduler thread on the same heap, unless one did already or the policy gives up."""
        log = logger.bind(child="ticker")
        gave_up: GiveUp | None = None
        with self._cond:
            if self._stopping or self._gave_up or self._thread is not dead:
                return
            now = self._clock.monotonic()
            decision = self._restarts.decide(Crashed(error=why), now=now, uptime_s=now - self._started_at)
            if isinstance(decision, GiveUp):
                self._gave_up, gave_up = True, decision
            else:
                self._started_at = now
                self._thread = self._new_thread()
            pending = len(self._heap)
        if gave_up is None:
            log.error("{}; started a new one (restart {}), {} timer(s) pending", why, self.restarts, pending)
            return
        log.critical("gave-up: {}; {}", why, gave_up.reason)
        if self._on_give_up is not None:
            self._on_give_up(f"the ticker gave up: {gave_up.reason}")


__all__ = ["MAX_DELAY_S", "TICKER_INTENSITY", "Ticker", "TimerHandle", "checked_delay"]
