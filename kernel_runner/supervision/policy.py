"""Pure restart policy: restart types, backoff, intensity windows and the one restart decision (no threads, no I/O).

The supervisor asks `RestartTracker.decide` what to do each time a child ends and does exactly what it answers;
no child decides about its own restart. See docs/architecture.md §4 for the defaults and where they come from.
"""

from __future__ import annotations

import collections
import random
from typing import Literal, Union

import attrs

from kernel_runner.supervision.exits import ExitReason, NormalExit, ShutdownExit

RestartType = Literal["permanent", "transient", "temporary"]
RESTART_TYPES: tuple[RestartType, ...] = ("permanent", "transient", "temporary")


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential delay with jitter and a cap: 0.5 s × 2^n, capped at 30 s, ±20 % by default."""

    initial_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: float = 0.2

    def base(self, attempt: int) -> float:
        """The delay before jitter: `attempt` counts consecutive restarts from 0."""
        return float(min(self.cap_s, self.initial_s * (self.factor ** max(0, attempt))))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """`attempt` counts consecutive restarts from 0; jitter spreads restarts of many children apart."""
        base = self.base(attempt)
        spread = base * self.jitter
        return max(0.0, min(self.cap_s, base + rng.uniform(-spread, spread)))

    def problems(self) -> list[str]:
        found = []
        if self.initial_s < 0:
            found.append(f"backoff.initial_s must be >= 0, got {self.initial_s}")
        if self.factor < 1:
            found.append(f"backoff.factor must be >= 1, got {self.factor}")
        if self.cap_s < self.initial_s:
            found.append(f"backoff.cap_s ({self.cap_s}) must be >= backoff.initial_s ({self.initial_s})")
        if not 0 <= self.jitter < 1:
            found.append(f"backoff.jitter must be in [0, 1), got {self.jitter}")
        return found


@attrs.frozen(kw_only=True)
class IntensityLimit:
    """OTP's intensity/period: more than `max_restarts` within `period_s` means give up."""

    max_restarts: int = 5
    period_s: float = 60.0

    def problems(self) -> list[str]:
        found = []
        if self.max_restarts < 0:
            found.append(f"intensity.max_restarts must be >= 0, got {self.max_restarts}")
        if self.period_s <= 0:
            found.append(f"intensity.period_s must be > 0, got {self.period_s}")
        return found


@attrs.frozen(kw_only=True)
class FatalRetry:
    """When a child that gave up is tried again, so FATAL is not for ever.

    systemd counts its start limit within StartLimitIntervalSec only; Kubernetes never stops retrying, it waits
    longer. Here a child that gave up stays FATAL (requests for it get its reject answer at once) until either:
    """

    # the restart-limit window (the intensity period) has passed since it gave up: the supervisor retries by itself;
    after_window: bool = True
    # or a request needs it, once the backoff its next restart would have waited has passed since it gave up.
    on_demand: bool = True


NO_FATAL_RETRY = FatalRetry(after_window=False, on_demand=False)


class IntensityWindow:
    """Sliding record of one child's restart times."""

    def __init__(self, limit: IntensityLimit) -> None:
        self._limit = limit
        self._times: collections.deque[float] = collections.deque()

    def clear(self) -> None:
        self._times.clear()

    def record(self, now: float) -> bool:
        """Record a restart at `now`; True if this restart would exceed the limit."""
        self._times.append(now)
        while self._times and now - self._times[0] > self._limit.period_s:
            self._times.popleft()
        return len(self._times) > self._limit.max_restarts


@attrs.frozen(kw_only=True)
class Restart:
    delay_s: float
    attempt: int


@attrs.frozen(kw_only=True)
class GiveUp:
    reason: str
    # When the supervisor tries the child again by itself (None: only on demand, or never; see FatalRetry).
    retry_in_s: float | None = None


@attrs.frozen(kw_only=True)
class Forget:
    """The child ended in a way its spec accepts as final; remove it from the table."""

    reason: str


Decision = Union[Restart, GiveUp, Forget]


def wants_restart(restart: RestartType, reason: ExitReason) -> bool:
    """OTP semantics: permanent always, transient only after an abnormal exit, temporary never."""
    if isinstance(reason, ShutdownExit):
        return False
    if restart == "permanent":
        return True
    if restart == "transient":
        return not isinstance(reason, NormalExit)
    return False


class RestartTracker:
    """Per-child restart bookkeeping: consecutive attempts (reset after a stable run) and the intensity window."""

    def __init__(
        self,
        *,
        restart: RestartType,
        backoff: Backoff,
        intensity: IntensityLimit,
        stable_after_s: float,
        retry_failed_start: bool = True,
        fatal_retry: FatalRetry = NO_FATAL_RETRY,
        rng: random.Random | None = None,
        total_restarts: int = 0,
    ) -> None:
        """`total_restarts`: where the count starts; a child started afresh after it gave up gets a new window and
        backoff, but its restarts go on counting (a counter that went back would read as a reset to Prometheus)."""
        self.restart = restart
        self.backoff = backoff
        self.stable_after_s = stable_after_s
        self.retry_failed_start = retry_failed_start
        self.fatal_retry = fatal_retry
        self._window = IntensityWindow(intensity)
        self._intensity = intensity
        self._rng = rng or random.Random()
        self.attempt = 0
        self.total_restarts = total_restarts
        # When it last gave up; None while it has not (or was retried since).
        self.gave_up_at: float | None = None

    def decide(self, reason: ExitReason, *, now: float, uptime_s: float | None, first_start: bool = False) -> Decision:
        """`first_start`: this was the child's first incarnation and it never came up (a failed first start)."""
        if not wants_restart(self.restart, reason):
            return Forget(reason=f"{self.restart} child ended: {reason.describe()}")
        if first_start and not self.retry_failed_start:
            # Whoever asked for the start has its answer (failed) and may ask again; retrying would answer nobody.
            return Forget(reason=f"its first start failed ({reason.describe()}); not retried")
        if uptime_s is not None and uptime_s >= self.stable_after_s:
            # A child that ran stably has recovered: the next failure starts backoff from the beginning.
            self.attempt = 0
        if self._window.record(now):
            self.gave_up_at = now
            return GiveUp(
                reason=(
                    f"more than {self._intensity.max_restarts} restarts within "
                    f"{self._intensity.period_s:g}s (last: {reason.describe()})"
                ),
                retry_in_s=self._intensity.period_s if self.fatal_retry.after_window else None,
            )
        decision = Restart(delay_s=self.backoff.delay(self.attempt, self._rng), attempt=self.attempt)
        self.attempt += 1
        self.total_restarts += 1
        return decision

    def demand_retry_in(self, now: float) -> float | None:
        """A request needs the child that gave up: how long until it may be retried (0: now; None: never).

        The wait is the backoff its next restart would have had, counted from the give-up, so requests cannot turn
        a crash loop back on faster than the backoff would have.
        """
        if self.gave_up_at is None or not self.fatal_retry.on_demand:
            return None
        return max(0.0, self.gave_up_at + self.backoff.base(self.attempt) - now)

    def count_restart_by_hand(self) -> None:
        """An operator's restart shows in the restart count but not in the restart-limit window or the backoff."""
        self.total_restarts += 1

    def revive(self) -> None:
        """The child is tried again after it gave up: a new restart-limit window begins, and the backoff goes on
        from where it was (a child that keeps failing is retried ever more slowly, up to the cap)."""
        self._window.clear()
        self.gave_up_at = None
        self.total_restarts += 1
