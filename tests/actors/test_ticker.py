"""The Ticker, the runner's one timer thread, outlives bad deadlines, bad targets and its own thread's death."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator

import pytest

from kernel_runner.supervision.timers import MAX_DELAY_S, TICKER_INTENSITY, Ticker, checked_delay
from tests.support.waiting import Recorder, wait_until


class ThreadKilled(BaseException):
    """Raised inside the Ticker's thread from outside, as a stand-in for whatever could end a thread."""


def kill_thread_of(ticker: Ticker) -> None:
    """Raise ThreadKilled in the scheduler thread at its next bytecode, then wake it so that it runs one."""
    ident = ticker.thread.ident
    assert ident is not None
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(ThreadKilled))
    assert hit == 1, "the scheduler thread was not found"


@pytest.fixture
def ticker() -> Iterator[Ticker]:
    tick = Ticker()
    yield tick
    tick.stop()


@pytest.mark.parametrize(("delay", "expected"), [
    (-5.0, 0.0), (0.25, 0.25), (math.inf, MAX_DELAY_S), (1e300, MAX_DELAY_S), (10**400, MAX_DELAY_S), (-math.inf, 0.0),
])
def test_delays_are_clamped_into_what_a_thread_can_wait(delay: float, expected: float) -> None:
    assert checked_delay(delay) == expected


@pytest.mark.parametrize("delay", [math.nan, "soon", None])
def test_a_delay_that_is_not_a_number_is_refused_to_the_caller(delay: object) -> None:
    with pytest.raises(ValueError, match="timer delay must be a number of seconds"):
        checked_delay(delay)  # type: ignore[arg-type]


def test_huge_and_infinite_deadlines_leave_the_ticker_firing(ticker: Ticker, recorder: Recorder) -> None:
    # Issue 14: one `inf` duration made the thread die with OverflowError and no timer fired after it.
    for delay in (math.inf, 1e300, 10**400, MAX_DELAY_S * 2):
        ticker.schedule(delay, recorder.ref, ("never", delay))
    with pytest.raises(ValueError):
        ticker.schedule(math.nan, recorder.ref, "nan")
    ticker.schedule(0.01, recorder.ref, "soon")
    recorder.wait_for(lambda m: m == "soon", timeout=5, what="a timer scheduled after the bad ones")
    assert ticker.is_alive() and ticker.restarts == 0
    assert not any(isinstance(m, tuple) and m[0] == "never" for m in recorder.messages)


def test_a_timer_due_before_the_others_wakes_the_waiting_thread(ticker: Ticker, recorder: Recorder) -> None:
    # Only a timer due before every other wakes the thread when it is scheduled (a later one need not).
    ticker.schedule(6.0, recorder.ref, "later")  # the thread now waits for this one
    ticker.schedule(0.05, recorder.ref, "sooner")  # due first: the thread must stop waiting for "later"
    ticker.schedule(8.0, recorder.ref, "latest")  # due after the earliest: nothing to wake for
    recorder.wait_for(lambda m: m == "sooner", timeout=4, what="the sooner timer, long before the later one")
    assert recorder.messages == ["sooner"]


def test_a_target_that_cannot_be_told_costs_only_its_own_timer(ticker: Ticker, recorder: Recorder,
                                                                log_lines: list[str]) -> None:
    ticker.schedule(0.0, object(), "to nowhere")  # type: ignore[arg-type]
    ticker.schedule(0.01, recorder.ref, "after")
    recorder.wait_for(lambda m: m == "after", timeout=5, what="the next timer")
    assert ticker.restarts == 0
    assert any("could not deliver str" in line for line in log_lines)


def test_a_killed_ticker_thread_is_replaced_and_no_pending_timer_is_lost(ticker: Ticker, recorder: Recorder,
                                                                         log_lines: list[str]) -> None:
    first = ticker.thread
    ticker.schedule(0.3, recorder.ref, "pending before the kill")
    kill_thread_of(ticker)
    ticker.schedule(0.0, recorder.ref, "wakes it")  # the thread runs Python again and meets the exception
    for message in ("wakes it", "pending before the kill"):
        recorder.wait_for(lambda m, want=message: m == want, timeout=5, what=message)
    assert ticker.restarts == 1 and ticker.thread is not first and ticker.is_alive()
    assert any("[ticker]" in line and "its thread died: ThreadKilled()" in line for line in log_lines)


def test_a_ticker_that_keeps_dying_gives_up_and_tells_the_runner(recorder: Recorder, log_lines: list[str]) -> None:
    reasons: list[str] = []
    ticker = Ticker(on_give_up=reasons.append)
    try:
        for death in range(TICKER_INTENSITY.max_restarts + 1):
            dead = ticker.thread
            kill_thread_of(ticker)
            ticker.schedule(0.0, recorder.ref, ("wake", death))
            wait_until(lambda dead=dead: not dead.is_alive(), timeout=5, what=f"death {death + 1}")
        wait_until(lambda: reasons, timeout=5, what="the give-up reported")
        assert "the ticker gave up: more than 5 restarts within 60s" in reasons[0]
        assert ticker.restarts == TICKER_INTENSITY.max_restarts
        assert any("gave-up" in line and "[ticker]" in line for line in log_lines)
    finally:
        ticker.stop()
