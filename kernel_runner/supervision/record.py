"""The supervisor's record of each child, and the reminders it sends itself through the ticker.

A child's state changes only through `ChildRecord.to`, which checks the edge against CHILD_EDGES (the same
PhaseMachine a child actor's phase goes through) and logs the lifecycle event that goes with it: every event of
docs/operations.md §2 that the supervisor logs comes from there. What to do when a child ends, or when someone asks
for a stop or a restart, is decided in supervisor.py (docs/architecture.md §3.2).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs
import pykka

from kernel_runner.ids import ChildId
from kernel_runner.observability.events import Event, emit
from kernel_runner.supervision.actor import PhaseMachine
from kernel_runner.supervision.exits import ExitReason
from kernel_runner.supervision.policy import RestartTracker
from kernel_runner.supervision.spec import ChildInfo, ChildSpec, ChildState
from kernel_runner.supervision.timers import TimerHandle

if TYPE_CHECKING:
    from loguru import Logger

_S = ChildState
# The states a running incarnation reports, in any order (a dying kernel reports BACKOFF); the supervisor also moves
# it to STOPPING when it asks it to stop.
_LIVE = frozenset({_S.STARTING, _S.RUNNING, _S.BACKOFF, _S.STOPPING})
# Every edge of a child's state as the supervisor keeps it (the diagram in supervisor.py).
CHILD_EDGES: dict[ChildState, frozenset[ChildState]] = {
    _S.STARTING: _LIVE | {_S.EXITED},  # STARTING -> STARTING: a new record's first incarnation starts
    _S.RUNNING: _LIVE - {_S.RUNNING} | {_S.EXITED},
    # Reported by a live incarnation, or waiting for the restart (no actor): started again, or stopped for good.
    _S.BACKOFF: _LIVE - {_S.BACKOFF} | {_S.EXITED, _S.STOPPED},
    _S.STOPPING: _LIVE | {_S.EXITED},  # STOPPING -> STOPPING: a stop asked of a child that reported it stops
    _S.EXITED: frozenset({_S.STARTING, _S.BACKOFF, _S.FATAL, _S.STOPPED}),
    _S.FATAL: frozenset({_S.STARTING, _S.STOPPED}),
    _S.STOPPED: frozenset({_S.STARTING}),
}


@attrs.frozen(kw_only=True)
class RestartDue:
    child_id: ChildId
    generation: int


@attrs.frozen(kw_only=True)
class RetryDue:
    """A child that gave up may be tried again now (`why` goes to the log)."""

    child_id: ChildId
    generation: int
    why: str


@attrs.frozen(kw_only=True)
class RetryDemanded:
    """A message arrived for a child that gave up (told by the child directory, from the sender's thread)."""

    child_id: ChildId


@attrs.frozen(kw_only=True)
class StopOverdue:
    child_id: ChildId
    generation: int


@attrs.frozen(kw_only=True)
class ShutdownDeadline:
    pass


class ChildRecord:
    """The supervisor's record of one child; `info()` is cached until something about the child changes."""

    def __init__(self, spec: ChildSpec, rng: random.Random, *, log: Logger, restarts: int = 0,
                 on_change: Callable[[], None] = lambda: None) -> None:
        """`restarts`: the count so far of a child that gave up and is now started from a new spec; `on_change`:
        told whenever the row changes (the table publishes a new snapshot)."""
        self.spec = spec
        self.log = log
        self._rng = rng
        self._on_change = on_change
        self.tracker = self.new_tracker(restarts)
        self.ref: pykka.ActorRef[Any] | None = None
        self.generation = 0
        self._life = PhaseMachine(ChildState.STARTING, CHILD_EDGES, log=None)
        self.pid: int | None = None
        self.running_since: float | None = None
        self.ran = False  # this incarnation reached RUNNING at least once
        self.last_exit: str | None = None
        self.extra: dict[str, Any] = {}
        # BACKOFF: the restart; FATAL: the retry after the window or on demand (one timer at a time).
        self.restart_timer: TimerHandle | None = None
        self.retry_at: float | None = None  # FATAL: when restart_timer tries it again (clock time)
        self.stop_timer: TimerHandle | None = None
        # A stop someone asked for: keep the child as a STOPPED row afterwards ("stop"), forget it ("forget": what it
        # was bound to is gone), or restart it as if it had ended with restart_reason.
        self.stop: Literal["stop", "forget", "restart", "restart_by_hand"] | None = None
        self.restart_reason: ExitReason | None = None
        # STOPPED because the child it is bound to stopped or gave up: it starts again with that child.
        self.stopped_with: ChildId | None = None
        self.stopped_seq = 0  # STOPPED rows past the bound go oldest first
        self._info: ChildInfo | None = None

    def new_tracker(self, restarts: int) -> RestartTracker:
        """A new restart policy state (window, backoff) whose restart count goes on from `restarts`."""
        spec = self.spec
        return RestartTracker(restart=spec.restart, backoff=spec.backoff, intensity=spec.intensity,
                              stable_after_s=spec.stable_after_s, retry_failed_start=spec.retry_failed_start,
                              fatal_retry=spec.fatal_retry, rng=self._rng, total_restarts=restarts)

    @property
    def child_id(self) -> ChildId:
        return self.spec.child_id

    @property
    def state(self) -> ChildState:
        return self._life.phase

    # ---- transitions: the one place a lifecycle event is logged -----------------------------------------------------
    def to(self, state: ChildState | None, event: Event | None = None, level: str = "INFO", message: str = "",
           *args: Any, **fields: Any) -> None:
        """Move to `state` (an edge CHILD_EDGES lacks raises InvalidTransition: a supervisor bug), then log `event`
        once, with its flat fields. `state` None: an event that changes no state (a pid learnt, a retry, a restart
        by hand asked for); `event` None: a state the child reported, which no event marks."""
        if state is not None:
            self._life.to(state)
            self.changed()
        if event is not None:
            emit(self.log, level, event, message, *args, **fields)

    def cancel_timers(self) -> None:
        for timer in (self.stop_timer, self.restart_timer):
            if timer is not None:
                timer.cancel()

    def cancel_restart(self) -> None:
        """No restart or retry is pending any more (BACKOFF's, or FATAL's after the window)."""
        if self.restart_timer is not None:
            self.restart_timer.cancel()
        self.restart_timer, self.retry_at = None, None

    def start_incarnation(self) -> int:
        """The next incarnation begins (STARTING, before its actor exists: a child's story begins with this line)."""
        self.generation += 1
        self.pid, self.running_since, self.ran = None, None, False
        self.extra, self.stop, self.restart_reason = {}, None, None
        self.to(ChildState.STARTING, Event.STARTING, "INFO", "starting (generation {})", self.generation,
                generation=self.generation)
        return self.generation

    def reported(self, state: ChildState, pid: int | None, now: float) -> None:
        """What the running incarnation says of itself: its state (unless a stop was asked for: it stays STOPPING
        whatever it reports), its pid once known, and when it first reached RUNNING."""
        if self.stop is None and state is not self.state:
            if self._life.allows(state):
                self.to(state)
            else:
                self.log.warning("reported {} while {}: ignored", state.value, self.state.value)
        if pid is not None and pid != self.pid:
            self.pid = pid
            self.to(None, Event.SPAWNED, "INFO", "spawned with pid {}", pid, pid=pid, generation=self.generation)
        if state is ChildState.RUNNING and not self.ran:
            self.ran, self.running_since = True, now
            self.to(None, Event.RUNNING, "INFO", "entered RUNNING state" + (f" (pid {self.pid})" if self.pid else ""),
                    pid=self.pid, generation=self.generation)
        self.changed()

    def uptime_s(self, now: float) -> float | None:
        return now - self.running_since if self.running_since is not None else None

    def exited(self, ended: ExitReason, *, uptime_s: float | None, shutting_down: bool) -> ExitReason:
        """The incarnation ended (`ended`: how): EXITED, with the one line per exit, which says why, how its process
        ended, and whether anyone asked for it (supervisord's "expected"). Returns the reason the policy judges."""
        pid, reason = self.pid, ended
        self.cancel_timers()
        self.ref, self.pid, self.running_since = None, None, None
        if self.stop in ("restart", "restart_by_hand") and self.restart_reason is not None:
            # Logged and shown as why it was asked for (an operator's restart, a failed health check), and the
            # policy judges an automatic restart by it; how the process ended goes with the `exited` record.
            reason = self.restart_reason
        self.last_exit = reason.describe()
        asked = self.stop is not None or shutting_down
        ran = f" after {uptime_s:.1f}s" if uptime_s is not None else " before it was running"
        self.to(ChildState.EXITED, Event.EXITED, "INFO" if asked or reason.kind == "normal" else "WARNING",
                "exited: {}{} ({})", reason.describe(), ran, "expected" if asked else "not expected",
                pid=pid, exit_code=getattr(ended, "code", None), signal=getattr(ended, "signal", None),
                generation=self.generation, uptime_s=round(uptime_s, 3) if uptime_s is not None else None,
                reason=reason.kind)
        return reason

    # ---- the row --------------------------------------------------------------------------------------------------
    def changed(self) -> None:
        self._info = None
        self._on_change()

    def info(self) -> ChildInfo:
        if self._info is None:
            self._info = ChildInfo(
                child_id=self.child_id, state=self.state, pid=self.pid, restarts=self.tracker.total_restarts,
                generation=self.generation, last_exit=self.last_exit, running_since=self.running_since,
                extra=dict(self.extra), binds_to=self.spec.binds_to,
            )
        return self._info


__all__ = ["CHILD_EDGES", "ChildRecord", "RestartDue", "RetryDemanded", "RetryDue", "ShutdownDeadline", "StopOverdue"]
