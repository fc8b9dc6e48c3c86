"""ProbeLoop: one probe's schedule, its thread, its overdue backstop and its counts, driven by its owner's messages.

The owner (an actor) says when the next probe is due (`probe_now`, `probe_in`, `next_in`) and hands the loop every
ProbeMessage it receives; the loop runs the probe on its ProbeThread, counts the answer and calls the owner's
`on_answer` on the owner's thread. What an answer means (a start, a restart, a health verdict) is the owner's.

    due tick ──> submitted to the thread ──> answer ──> counted ──> on_answer(answer)
                        └── no answer within the probe's timeouts + OVERDUE_SLACK_S ──> counted as failed;
                              while the thread is still stuck in it, each due tick fails at once (no new request)

Only a probe that its own timeouts do not bound (HTTP: a server trickling bytes) is watched for being overdue; a
TCP connect and a command end by themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import pykka

from kernel_runner.observability.debug_lines import debug
from kernel_runner.probes.kinds import Probe, ProbeAnswer, failed
from kernel_runner.probes.messages import ProbeDue, ProbeFinished, ProbeMessage, ProbeOverdue
from kernel_runner.probes.runner import ProbeThread
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.timers import TimerHandle

if TYPE_CHECKING:
    from loguru import Logger

# A probe whose thread has not answered by its timeouts plus this much counts as failed (a server trickling bytes
# can keep one requests call alive past its per-read timeout).
OVERDUE_SLACK_S = 2.0
HUNG = "the probe hung past its timeouts"
STILL_HANGING = "the previous probe is still hanging"

Schedule = Callable[[float, object], TimerHandle]


def warm_up_period(floor_s: float, period_s: float, failures: int) -> float:
    """Quickly at first, backing off: `floor_s` doubled per failure so far, up to `period_s`, never below the floor.

    Until a probe first passes, this is its period: a service or model that is ready at once is seen within ms, and
    one that takes half an hour is not probed 20 times a second.
    """
    return max(floor_s, min(period_s, floor_s * 2.0 ** min(failures, 30)))


@attrs.define(kw_only=True)
class ProbeCounts:
    """What one probe's answers add up to; thresholds compare with `counted_failures`."""

    probes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    # Consecutive failures outside the grace: a failure before `grace_until` (a slow start) does not count.
    counted_failures: int = 0
    grace_until: float = 0.0
    last: ProbeAnswer | None = None
    # The failures in a row that the last answer, a pass, ended (0 after a failure).
    recovered_after: int = 0

    def record(self, answer: ProbeAnswer, now: float) -> None:
        self.probes += 1
        self.last = answer
        if answer.ok:
            self.recovered_after = self.consecutive_failures
            self.consecutive_failures = self.counted_failures = 0
            self.consecutive_successes += 1
            return
        self.failures += 1
        self.recovered_after = 0
        self.consecutive_failures += 1
        self.consecutive_successes = 0
        if now >= self.grace_until:
            self.counted_failures += 1

    def start_grace(self, until: float) -> None:
        """Count afresh, and not before `until` (a restarted server gets its start-up time again)."""
        self.counted_failures = 0
        self.grace_until = until

    def describe_last(self) -> str:
        return "no probe finished" if self.last is None else self.last.describe()


class ProbeLoop:
    """Schedules, runs, times out and counts one probe for one owner; see the module docstring."""

    def __init__(self, tag: str, probe: Probe, *, owner: pykka.ActorRef[Any], schedule: Schedule, clock: Clock,
                 log: Callable[[], Logger], on_answer: Callable[[ProbeAnswer], None], name: str) -> None:
        """`schedule(delay_s, message)` tells the owner `message` later (its SupervisedActor.schedule); `log` gives
        the owner's current logger; `name` names the thread (`Prober-<name>`)."""
        self.tag = tag
        self.probe = probe
        self.counts = ProbeCounts()
        self._owner = owner
        self._schedule = schedule
        self._clock = clock
        self._log = log
        self._on_answer = on_answer
        self._name = name
        self._thread: ProbeThread | None = None
        self._epoch = 0
        self._seq = 0
        self._in_flight: int | None = None
        self._overdue: TimerHandle | None = None
        self._dispatched_at = 0.0
        # A probe the loop gave up waiting for; the thread is still in it, so no new probe can start yet.
        self._stuck: int | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the probe thread (once); until then, and after `stop`, nothing is probed."""
        if self._thread is None:
            self._thread = ProbeThread(owner=self._owner, clock=self._clock, tag=self.tag, name=self._name)
            self._thread.start()

    def stop(self) -> None:
        """Nothing is probed from now on: pending ticks are void, the thread ends (never waited for)."""
        self.cancel()
        if self._overdue is not None:
            self._overdue.cancel()
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def cancel(self) -> None:
        """A tick still pending belongs to a schedule that just ended."""
        self._epoch += 1

    def probe_now(self) -> None:
        self._epoch += 1
        self._dispatch()

    def probe_in(self, delay_s: float) -> None:
        """The next probe `delay_s` from now."""
        self._epoch += 1
        self._schedule(delay_s, ProbeDue(tag=self.tag, epoch=self._epoch))

    def next_in(self, period_s: float) -> None:
        """The next probe one `period_s` after the last one began (its own run time is not added to the period)."""
        elapsed = self._clock.monotonic() - self._dispatched_at
        self.probe_in(max(0.0, period_s - elapsed))

    def handle(self, message: ProbeMessage) -> None:
        match message:
            case ProbeDue():
                self._handle_due(message)
            case ProbeFinished():
                self._handle_finished(message)
            case ProbeOverdue():
                self._handle_overdue(message)

    # ---- one probe's way through ----------------------------------------------------------------------------------
    def _handle_due(self, message: ProbeDue) -> None:
        if message.epoch != self._epoch:
            return
        if self._stuck is not None:
            # The thread is still inside a hung probe: this period's probe fails without a new one.
            self._dispatched_at = self._clock.monotonic()
            self._answered(failed(STILL_HANGING))
            return
        self._dispatch()

    def _dispatch(self) -> None:
        if self._in_flight is not None or self._stuck is not None or self._thread is None:
            return
        self._seq += 1
        if not self._thread.submit(self._seq, self.probe):
            return
        self._in_flight = self._seq
        self._dispatched_at = self._clock.monotonic()
        if not self.probe.self_bounded:
            self._overdue = self._schedule(self.probe.bound_s + OVERDUE_SLACK_S,
                                           ProbeOverdue(tag=self.tag, seq=self._seq))

    def _handle_overdue(self, message: ProbeOverdue) -> None:
        if message.seq != self._in_flight:
            return
        self._in_flight = None
        self._stuck = message.seq
        self._dispatched_at = self._clock.monotonic()  # the next verdict is one period from now
        self._log().warning("{} probe {} gave no result within its timeouts; counted as failed", self.tag, message.seq)
        self._answered(failed(HUNG))

    def _handle_finished(self, message: ProbeFinished) -> None:
        if message.seq == self._stuck:
            self._stuck = None  # the hung probe finally ended; its verdict was given already
            return
        if message.seq != self._in_flight or self._thread is None:
            return
        self._in_flight = None
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        self._answered(message.answer)

    def _answered(self, answer: ProbeAnswer) -> None:
        self.counts.record(answer, self._clock.monotonic())
        if not answer.ok:
            debug(self._log(), "{} probe failed: {}", self.tag, answer.error)
        self._on_answer(answer)


__all__ = ["HUNG", "OVERDUE_SLACK_S", "STILL_HANGING", "ProbeCounts", "ProbeLoop", "Schedule", "warm_up_period"]
