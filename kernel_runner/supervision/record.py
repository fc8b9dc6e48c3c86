"""The supervisor's record of each child, and the reminders it sends itself through the ticker.

Data only: what the supervisor knows of one child between two of its messages (supervisor.py decides what to do
with it, docs/architecture.md §3.2).
"""

from __future__ import annotations

import random
from typing import Any, Literal

import attrs
import pykka

from kernel_runner.ids import ChildId
from kernel_runner.supervision.exits import ExitReason
from kernel_runner.supervision.policy import RestartTracker
from kernel_runner.supervision.spec import ChildInfo, ChildSpec, ChildState
from kernel_runner.supervision.timers import TimerHandle


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

    def __init__(self, spec: ChildSpec, order: int, rng: random.Random, *, restarts: int = 0) -> None:
        """`restarts`: the count so far of a child that gave up and is now started from a new spec."""
        self.spec = spec
        self.order = order
        self._rng = rng
        self.tracker = self.new_tracker(restarts)
        self.ref: pykka.ActorRef[Any] | None = None
        self.generation = 0
        self.state = ChildState.STARTING
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

    def changed(self) -> None:
        self._info = None

    def info(self) -> ChildInfo:
        if self._info is None:
            self._info = ChildInfo(
                child_id=self.child_id, state=self.state, pid=self.pid, restarts=self.tracker.total_restarts,
                generation=self.generation, last_exit=self.last_exit, running_since=self.running_since,
                extra=dict(self.extra), binds_to=self.spec.binds_to,
            )
        return self._info


__all__ = ["ChildRecord", "RestartDue", "RetryDemanded", "RetryDue", "ShutdownDeadline", "StopOverdue"]
