"""Restart policy with explicit times (a fake clock is just the `now` we pass in)."""

from __future__ import annotations

import random

import pytest

from kernel_runner.supervision.exits import (
    EXIT_KINDS,
    Crashed,
    NormalExit,
    ProcessDied,
    RestartRequested,
    ShutdownExit,
    StartFailed,
    Unhealthy,
)
from kernel_runner.supervision.policy import (
    NO_FATAL_RETRY,
    Backoff,
    FatalRetry,
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


def give_up(tracker: RestartTracker, *, at: float) -> GiveUp:
    """Fail the child until the tracker gives up, the last failure at `at`."""
    died = ProcessDied(code=1)
    while True:
        decision = tracker.decide(died, now=at, uptime_s=0.1)
        if isinstance(decision, GiveUp):
            return decision


def test_a_give_up_says_when_the_child_is_tried_again() -> None:
    assert give_up(make_tracker(fatal_retry=FatalRetry()), at=5.0).retry_in_s == 60.0  # the intensity period
    assert give_up(make_tracker(fatal_retry=FatalRetry(after_window=False)), at=5.0).retry_in_s is None
    assert give_up(make_tracker(), at=5.0).retry_in_s is None  # the tracker's default: never (NO_FATAL_RETRY)


def test_a_request_may_bring_a_fatal_child_back_once_its_next_backoff_has_passed() -> None:
    tracker = make_tracker(fatal_retry=FatalRetry())
    assert tracker.demand_retry_in(0.0) is None, "it has not given up"
    give_up(tracker, at=10.0)
    # Three restarts were made (1 s, 2 s, 4 s): the next one would have waited 8 s.
    assert tracker.demand_retry_in(10.0) == 8.0
    assert tracker.demand_retry_in(15.0) == 3.0
    assert tracker.demand_retry_in(30.0) == 0.0
    assert make_tracker(fatal_retry=NO_FATAL_RETRY).demand_retry_in(30.0) is None
    never_on_demand = make_tracker(fatal_retry=FatalRetry(on_demand=False))
    give_up(never_on_demand, at=10.0)
    assert never_on_demand.demand_retry_in(100.0) is None


def test_a_revived_child_gets_a_new_window_and_keeps_its_backoff() -> None:
    tracker = make_tracker(fatal_retry=FatalRetry())
    give_up(tracker, at=10.0)
    restarts, attempt = tracker.total_restarts, tracker.attempt
    tracker.revive()
    assert tracker.total_restarts == restarts + 1 and tracker.demand_retry_in(11.0) is None
    # The window starts afresh (no give-up on the next failure), and the backoff goes on from where it was (capped).
    assert tracker.decide(ProcessDied(code=1), now=11.0, uptime_s=0.1) == Restart(delay_s=8.0, attempt=attempt)


def test_every_exit_reason_has_a_kind_from_the_bounded_list() -> None:
    # The `exited` event's `reason` and the exits metric's label come from this list (docs/operations.md §2, §5).
    reasons = [NormalExit(), ShutdownExit(), ShutdownExit(code=0, signal=15), ProcessDied(code=1),
               ProcessDied(code=137, signal=9), StartFailed(error="x"), Crashed(error="x"), Unhealthy(detail="x"),
               RestartRequested(why="x")]
    kinds = [reason.kind for reason in reasons]
    assert set(kinds) == set(EXIT_KINDS)
    assert ProcessDied(code=137, signal=9).kind == "killed" and ProcessDied(code=1).kind == "process-died"
