"""TreeShutdown: the runner's orderly stop of the whole tree, in tiers, within one deadline (docs/architecture.md §3.2).

The highest tier is asked to stop first; the next once every child of it has ended or overrun its grace (the
supervisor stops a stuck actor itself and tells this plan), and no child's grace reaches past the deadline. Past the
deadline, whatever is left has its actor stopped directly (its `cleanup` still kills its processes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.record import ChildRecord, ShutdownDeadline
from kernel_runner.supervision.spec import ChildState, ShutdownDone
from kernel_runner.supervision.table import ChildTable
from kernel_runner.supervision.timers import Ticker

if TYPE_CHECKING:
    from loguru import Logger


class TreeShutdown:
    """One shutdown under way: its deadline, the tier being stopped, and the answer (`done`) set at the end."""

    def __init__(self, children: ChildTable, *, grace_s: float, clock: Clock, ticker: Ticker,
                 supervisor: pykka.ActorRef[Any], log: Logger) -> None:
        self.done = ShutdownDone()
        self.deadline = clock.monotonic() + grace_s
        self._children = children
        self._log = log
        self._tier: int | None = None
        log.info("shutting down {} child(ren) within {:.1f}s", len(children), grace_s)
        self._timer = ticker.schedule(grace_s, supervisor, ShutdownDeadline())

    def begin(self) -> None:
        """Children that are not running (waiting for a restart, given up, stopped) go at once; then the top tier."""
        for child in [c for c in self._children if c.ref is None]:
            child.cancel_restart()
            self._children.remove(child, "the runner is shutting down")
        self.next_tier()

    def next_tier(self) -> None:
        """After each child that is gone: the next tier is asked to stop once the one above has gone."""
        if not self._children:
            self._complete()
            return
        top = max(child.spec.tier for child in self._children)
        if self._tier == top:
            return
        self._tier = top
        self._children.request_stops([child for child in self._children
                                      if child.spec.tier == top and child.state is not ChildState.STOPPING],
                                     "runner shutdown", deadline=self.deadline)

    def stuck(self, child: ChildRecord) -> None:
        """`child` overran its grace and its actor was stopped: a stuck actor may never report its exit, so the lower
        tiers do not wait for it any longer."""
        self.done.forced.append(child.child_id)
        self._children.remove(child, "the runner is shutting down")
        self.next_tier()

    def deadline_passed(self) -> None:
        if self.done.is_set():
            return
        stuck = list(self._children)
        self._log.error("shutdown deadline passed; forcing stop of {}", ", ".join(c.child_id for c in stuck))
        self.done.forced.extend(child.child_id for child in stuck)
        for child in stuck:
            if child.ref is not None:
                child.ref.stop(block=False)
            self._children.remove(child, "the runner is shutting down")
        self._complete()

    def _complete(self) -> None:
        self._timer.cancel()
        self._log.info("all children stopped")
        self.done.set()


__all__ = ["TreeShutdown"]
