"""ChildTable: the supervisor's bookkeeping, apart from its decisions (supervisor.py).

It holds the records in start order and carries out what the supervisor decided: it starts an incarnation (its
context, its factory, the directory entry), asks children to stop within their grace, sets the supervisor's
reminders (restart, retry, stop overdue), keeps the child directory current, bounds the STOPPED rows, and hands
out a tree snapshot after every change (docs/architecture.md §3.2).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pykka

from kernel_runner.ids import ChildId
from kernel_runner.observability.debug_lines import debug
from kernel_runner.observability.events import Event
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.directory import ChildDirectory
from kernel_runner.supervision.record import ChildRecord, RestartDue, RetryDemanded, RetryDue, StopOverdue
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.spec import ChildContext, ChildInfo, ChildSpec, ChildState, StopRequested, TreeSnapshot
from kernel_runner.supervision.timers import Ticker

if TYPE_CHECKING:
    from loguru import Logger

# A child asked to stop gets its spec's grace plus this much before the supervisor stops its actor itself.
STOP_MARGIN_S = 1.0
# STOPPED rows kept in the tree (a runner that starts and stops services under ever new names stays bounded).
MAX_STOPPED_ROWS = 100


class ChildTable:
    """The supervisor's records, and the directory, timers and stop requests that follow from its decisions."""

    def __init__(self, *, supervisor: pykka.ActorRef[Any], directory: ChildDirectory, clock: Clock, ticker: Ticker,
                 rng: random.Random, log: Logger) -> None:
        self._supervisor = supervisor
        self._directory = directory
        self._clock = clock
        self._ticker = ticker
        self._rng = rng
        self._log = log
        self._records: dict[ChildId, ChildRecord] = {}  # in start order
        self._stopped_seq = 0
        self._version = 0
        self._dirty = False

    # ---- lookups ----------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ChildRecord]:
        """Over a copy: the caller may remove records as it goes."""
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def get(self, child_id: ChildId) -> ChildRecord | None:
        return self._records.get(child_id)

    def current(self, child_id: ChildId, generation: int) -> ChildRecord | None:
        """The record, if `generation` is its current incarnation (a stale message names an older one)."""
        child = self._records.get(child_id)
        return child if child is not None and child.generation == generation else None

    def bound_to(self, child_id: ChildId, *, stopped_only: bool = False) -> list[ChildRecord]:
        """The children whose spec binds them to `child_id` (systemd's BindsTo=)."""
        return [c for c in self._records.values()
                if c.spec.binds_to == child_id and (c.state is ChildState.STOPPED or not stopped_only)]

    def stopped_with(self, child_id: ChildId) -> list[ChildRecord]:
        """The STOPPED children that stopped because `child_id` did: they start again with it."""
        return [c for c in self._records.values() if c.state is ChildState.STOPPED and c.stopped_with == child_id]

    # ---- records and the directory ------------------------------------------------------------------------------
    def add(self, spec: ChildSpec, *, restarts: int) -> ChildRecord:
        """A new record, last in start order; messages for it wait for its first incarnation."""
        child = ChildRecord(spec, self._rng, log=self._log.bind(child=spec.child_id), restarts=restarts,
                            on_change=self.touch)
        self._records[spec.child_id] = child
        self._directory.register(spec.child_id, spec.reject)
        return child

    def remove(self, child: ChildRecord, why: str) -> None:
        """Gone from the tree: its messages are answered by its reject from now on."""
        self._records.pop(child.child_id, None)
        self._directory.close(child.child_id, why)
        self.touch()

    def drop(self, child: ChildRecord) -> None:
        """Replaced by a new record of the same id (whose directory entry takes over)."""
        child.cancel_restart()
        self._records.pop(child.child_id, None)

    def reopen(self, child: ChildRecord) -> None:
        """A child that is not running gets a new incarnation: messages wait for its start again."""
        self._directory.register(child.child_id, child.spec.reject)

    def close(self, child: ChildRecord, why: str, demand: Callable[[ChildId], None] | None = None) -> None:
        """No incarnation will take messages for now: its reject answers them (`demand`: told of each)."""
        self._directory.close(child.child_id, why, demand=demand)

    def detach(self, child: ChildRecord) -> None:
        self._directory.detach(child.child_id, child.generation)

    def keep_stopped(self, child: ChildRecord) -> None:
        """`child` stays as a STOPPED row (its last exit and extra), the newest one; its messages get its reject."""
        child.stop, child.restart_timer, child.retry_at = None, None, None
        self._stopped_seq += 1
        child.stopped_seq = self._stopped_seq
        child.changed()
        self._directory.close(child.child_id, "it was stopped")

    def drop_stopped_past_bound(self) -> None:
        """The oldest STOPPED rows past MAX_STOPPED_ROWS go, with the STOPPED rows bound to them."""
        stopped = sorted((c for c in self._records.values() if c.state is ChildState.STOPPED),
                         key=lambda c: c.stopped_seq)
        for oldest in stopped[:max(0, len(stopped) - MAX_STOPPED_ROWS)]:
            debug(oldest.log, "STOPPED row dropped: more than {} kept", MAX_STOPPED_ROWS)
            self.remove(oldest, "it was stopped")
            self.drop_stopped_bound_to(oldest.child_id)

    def drop_stopped_bound_to(self, child_id: ChildId) -> None:
        for dependent in self.bound_to(child_id, stopped_only=True):
            self.remove(dependent, "it was stopped")

    # ---- incarnations ---------------------------------------------------------------------------------------------
    def spawn(self, child: ChildRecord) -> str | None:
        """Start the next incarnation; returns the factory's error, if it raised."""
        generation = child.start_incarnation()
        ctx = ChildContext(child_id=child.child_id, generation=generation, supervisor=self._supervisor,
                           directory=self._directory, clock=self._clock, ticker=self._ticker)
        try:
            child.ref = child.spec.factory(ctx)
        except Exception as exc:  # noqa: BLE001 - a factory that raises is a failed start like any other
            child.log.opt(exception=exc).error("factory failed: {!r}", exc)
            child.ref = None
            return repr(exc)
        self._directory.attach(child.child_id, generation, child.ref)
        return None

    def request_stops(self, children: list[ChildRecord], reason: str, *, deadline: float | None) -> None:
        """Ask each child to stop within its grace, no grace reaching past `deadline` (the runner's shutdown). Every
        request is told before anything else is done (timers, log lines), so a tier of 100 stops in parallel: the
        children that already stop compete for the GIL with this loop, which would otherwise hand out one request
        per time slice."""
        now = self._clock.monotonic()
        graces: dict[float, list[ChildRecord]] = {}
        for child in children:
            assert child.ref is not None
            grace_s = child.spec.shutdown_s
            if deadline is not None:
                grace_s = max(0.0, min(grace_s, deadline - now - STOP_MARGIN_S))
            tell_if_alive(child.ref, StopRequested(reason=reason, grace_s=grace_s))
            graces.setdefault(grace_s, []).append(child)
        for grace_s, same in graces.items():
            timers = self._ticker.schedule_many(grace_s + STOP_MARGIN_S, [
                (self._supervisor, StopOverdue(child_id=c.child_id, generation=c.generation)) for c in same])
            for child, timer in zip(same, timers, strict=True):
                child.stop_timer = timer
        for child in children:
            child.to(ChildState.STOPPING, Event.STOPPING, "INFO", "stopping: {}", reason, pid=child.pid, reason=reason)

    # ---- the supervisor's reminders -------------------------------------------------------------------------------
    def schedule_restart(self, child: ChildRecord, delay_s: float) -> None:
        child.restart_timer = self._ticker.schedule(
            delay_s, self._supervisor, RestartDue(child_id=child.child_id, generation=child.generation))

    def schedule_retry(self, child: ChildRecord, delay_s: float, why: str) -> None:
        child.cancel_restart()
        child.retry_at = self._clock.monotonic() + delay_s
        child.restart_timer = self._ticker.schedule(delay_s, self._supervisor, RetryDue(
            child_id=child.child_id, generation=child.generation, why=why))

    def demand_hook(self) -> Callable[[ChildId], None]:
        """What the directory calls, from the sender's thread, when a message arrives for a child that gave up."""
        supervisor = self._supervisor

        def demanded(child_id: ChildId) -> None:
            tell_if_alive(supervisor, RetryDemanded(child_id=child_id))

        return demanded

    # ---- the tree report --------------------------------------------------------------------------------------------
    def touch(self) -> None:
        self._dirty = True

    def infos(self) -> list[ChildInfo]:
        return [child.info() for child in self._records.values()]

    def publish(self, on_tree_change: Callable[[TreeSnapshot], None] | None) -> None:
        """A new snapshot when anything changed since the last one (its version counts the changes)."""
        if not self._dirty:
            return
        self._dirty = False
        self._version += 1
        if on_tree_change is not None:
            on_tree_change(TreeSnapshot(version=self._version, children=tuple(self.infos())))


__all__ = ["MAX_STOPPED_ROWS", "STOP_MARGIN_S", "ChildTable"]
