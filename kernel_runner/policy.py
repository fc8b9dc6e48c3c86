"""Pure restart policy: restart types, backoff, intensity windows and the restart decision (no threads)."""

from __future__ import annotations

import collections
import random
from typing import Literal, Union

import attrs

from kernel_runner.messages import ExitReason, NormalExit, ShutdownExit

RestartType = Literal["permanent", "transient", "temporary"]


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential delay with jitter and a cap (anchors §8: 0.5 s × 2^n, cap 30 s, jitter 0.2)."""

    initial_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        """`attempt` counts consecutive restarts from 0; jitter spreads restarts of many children apart."""
        base = min(self.cap_s, self.initial_s * (self.factor ** max(0, attempt)))
        spread = base * self.jitter
        return max(0.0, min(self.cap_s, base + rng.uniform(-spread, spread)))


@attrs.frozen(kw_only=True)
class IntensityLimit:
    """OTP's intensity/period: more than `max_restarts` within `period_s` means give up."""

    max_restarts: int = 5
    period_s: float = 60.0


class IntensityWindow:
    """Sliding record of restart times for one child."""

    def __init__(self, limit: IntensityLimit) -> None:
        self._limit = limit
        self._times: collections.deque[float] = collections.deque()

    def record(self, now: float) -> bool:
        """Record a restart at `now`; True if this restart would exceed the limit."""
        self._times.append(now)
        while self._times and now - self._times[0] > self._limit.period_s:
            self._times.popleft()
        return len(self._times) > self._limit.max_restarts

    def __len__(self) -> int:
        return len(self._times)


@attrs.frozen(kw_only=True)
class Restart:
    delay_s: float
    attempt: int


@attrs.frozen(kw_only=True)
class GiveUp:
    reason: str


@attrs.frozen(kw_only=True)
class Forget:
    """The child ended in a way its restart type accepts; remove it from the table."""

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
        rng: random.Random | None = None,
    ) -> None:
        self.restart = restart
        self.backoff = backoff
        self.stable_after_s = stable_after_s
        self._window = IntensityWindow(intensity)
        self._intensity = intensity
        self._rng = rng or random.Random()
        self.attempt = 0
        self.total_restarts = 0

    def decide(self, reason: ExitReason, *, now: float, uptime_s: float | None) -> Decision:
        if not wants_restart(self.restart, reason):
            return Forget(reason=f"{self.restart} child ended: {reason.describe()}")
        if uptime_s is not None and uptime_s >= self.stable_after_s:
            # A child that ran stably has recovered: the next failure starts backoff from the beginning.
            self.attempt = 0
        if self._window.record(now):
            return GiveUp(
                reason=(
                    f"more than {self._intensity.max_restarts} restarts within "
                    f"{self._intensity.period_s:g}s (last: {reason.describe()})"
                )
            )
        decision = Restart(delay_s=self.backoff.delay(self.attempt, self._rng), attempt=self.attempt)
        self.attempt += 1
        self.total_restarts += 1
        return decision
