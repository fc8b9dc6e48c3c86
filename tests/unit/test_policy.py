"""Restart policy with explicit times (a fake clock is just the `now` we pass in)."""

from __future__ import annotations

import random

import pytest

from kernel_runner.exits import Crashed, NormalExit, ProcessDied, ShutdownExit
from kernel_runner.policy import (
    Backoff,
    Forget,
    GiveUp,
    IntensityLimit,
    IntensityWindow,
    Restart,
    RestartTracker,
    wants_restart,
)


def test_backoff_doubles_and_caps_without_jitter() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, cap_s=4.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff.delay(n, rng) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_jitter_stays_within_its_band_and_cap() -> None:
    backoff = Backoff(initial_s=1.0, factor=2.0, cap_s=30.0, jitter=0.2)
    rng = random.Random(7)
    delays = [backoff.delay(2, rng) for _ in range(200)]
    assert min(delays) >= 3.2 and max(delays) <= 4.8
    assert len(set(delays)) > 100, "jitter must spread restarts apart"
    assert all(backoff.delay(50, rng) <= 30.0 for _ in range(50))


def test_intensity_window_counts_only_the_period() -> None:
    window = IntensityWindow(IntensityLimit(max_restarts=2, period_s=10.0))
    assert window.record(0.0) is False
    assert window.record(1.0) is False
    assert window.record(2.0) is True
    # 15 s later the old restarts have left the window.
    assert window.record(17.0) is False


@pytest.mark.parametrize(
    ("restart", "reason", "expected"),
    [
        ("permanent", NormalExit(), True),
        ("permanent", Crashed(error="x"), True),
        ("permanent", ShutdownExit(), False),
        ("transient", NormalExit(), False),
        ("transient", ProcessDied(code=1), True),
        ("temporary", ProcessDied(code=1), False),
    ],
)
def test_restart_types_follow_otp(restart: str, reason: object, expected: bool) -> None:
    assert wants_restart(restart, reason) is expected  # type: ignore[arg-type]


def make_tracker(**kwargs: object) -> RestartTracker:
    defaults: dict[str, object] = {
        "restart": "permanent",
        "backoff": Backoff(initial_s=1.0, factor=2.0, cap_s=8.0, jitter=0.0),
        "intensity": IntensityLimit(max_restarts=3, period_s=60.0),
        "stable_after_s": 10.0,
        "rng": random.Random(0),
    }
    defaults.update(kwargs)
    return RestartTracker(**defaults)  # type: ignore[arg-type]


def test_tracker_backs_off_then_gives_up_on_intensity() -> None:
    tracker = make_tracker()
    died = ProcessDied(code=1)
    decisions = [tracker.decide(died, now=float(t), uptime_s=0.1) for t in range(4)]
    assert decisions[:3] == [Restart(delay_s=1.0, attempt=0), Restart(delay_s=2.0, attempt=1), Restart(delay_s=4.0, attempt=2)]
    assert isinstance(decisions[3], GiveUp)
    assert "more than 3 restarts within 60s" in decisions[3].reason
    assert tracker.total_restarts == 3


def test_tracker_resets_backoff_after_a_stable_run() -> None:
    tracker = make_tracker(intensity=IntensityLimit(max_restarts=100, period_s=60.0))
    died = ProcessDied(code=1)
    tracker.decide(died, now=0.0, uptime_s=0.1)
    tracker.decide(died, now=1.0, uptime_s=0.1)
    assert tracker.decide(died, now=2.0, uptime_s=0.1) == Restart(delay_s=4.0, attempt=2)
    # It then ran 30 s, longer than stable_after_s: the next failure starts from the first delay again.
    assert tracker.decide(died, now=40.0, uptime_s=30.0) == Restart(delay_s=1.0, attempt=0)


def test_tracker_forgets_children_whose_restart_type_accepts_the_exit() -> None:
    assert isinstance(make_tracker(restart="transient").decide(NormalExit(), now=0, uptime_s=1), Forget)
    assert isinstance(make_tracker(restart="temporary").decide(Crashed(error="x"), now=0, uptime_s=1), Forget)
    assert isinstance(make_tracker().decide(ShutdownExit(), now=0, uptime_s=1), Forget)
