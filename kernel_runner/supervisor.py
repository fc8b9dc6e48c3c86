"""SupervisorActor: a generic, OTP-shaped supervisor for pykka actors.

It starts children from specs (checked when they are added), asks the pure policy what to do each time one ends
(restart after a backoff, forget, or give up), keeps the child directory current so messages reach the right
incarnation, pushes a tree snapshot after every change, and stops everything in tier order within one deadline.
It knows nothing of what its children do: no services, languages or wire (docs/architecture.md §3). It decides;
the bookkeeping is the table's (supervision/table.py: records, directory, timers, stop requests, snapshots), each
state change the record's (supervision/record.py: one transition function checks the edge and logs the event).

Life of one child, as the supervisor sees it:

    StartChild ──▶ STARTING ──(child reports)──▶ RUNNING ──▶ exit ──▶ policy: Restart ──▶ BACKOFF ──▶ STARTING …
                      │                                        │       Forget  ──▶ removed (directory closed)
                      └─ StopChild / RestartChild ──▶ STOPPING ┘       GiveUp  ──▶ FATAL ──▶ retried: STARTING …
                                      StopChild: ──▶ STOPPED (kept) ──RestartChild(by_hand)──▶ STARTING …

A FATAL child answers requests through its reject at once; it is retried once the restart-limit window has passed,
or sooner when a request needs it (its spec's FatalRetry), or when someone starts it again. A STOPPED child stays in
the tree (supervisorctl's STOPPED row: its last exit, its extra) until it is started again by hand, with its own spec,
or a StartChild for its id replaces it; at most MAX_STOPPED_ROWS are kept, the oldest go first.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pykka
from loguru import logger

from kernel_runner.ids import ChildId
from kernel_runner.observability.debug_lines import debug
from kernel_runner.observability.events import Event
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.directory import ChildDirectory
from kernel_runner.supervision.exits import ExitReason, StartFailed
from kernel_runner.supervision.policy import Forget, GiveUp, Restart
from kernel_runner.supervision.record import ChildRecord, RestartDue, RetryDemanded, RetryDue, ShutdownDeadline, StopOverdue
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.shutdown import TreeShutdown
from kernel_runner.supervision.spec import (
    AlreadyStarted,
    ChildExited,
    ChildInfoUpdated,
    ChildSpec,
    ChildState,
    ChildStateChanged,
    RestartChild,
    ShutdownDone,
    ShutdownTree,
    StartAnswer,
    StartChild,
    Started,
    StartRefused,
    StopChild,
    TreeSnapshot,
    WhichChildrenQuery,
)
from kernel_runner.supervision.table import STOP_MARGIN_S, ChildTable
from kernel_runner.supervision.timers import Ticker


class SupervisorActor(pykka.ThreadingActor):
    """The only decider of what happens to a child when it ends; answers no one but through its messages."""

    def __init__(
        self,
        *,
        directory: ChildDirectory,
        clock: Clock,
        ticker: Ticker,
        on_tree_change: Callable[[TreeSnapshot], None] | None = None,
        on_child_added: Callable[[ChildId], None] | None = None,
        on_escalate: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.log = logger.bind(child="supervisor")
        self._clock = clock
        self._ticker = ticker
        self._on_tree_change = on_tree_change
        # Told a child's id before its first line is logged (the runner opens the child's log file there).
        self._on_child_added = on_child_added
        self._on_escalate = on_escalate
        self._children = ChildTable(supervisor=self.actor_ref, directory=directory, clock=clock, ticker=ticker,
                                    rng=rng or random.Random(), log=self.log)
        self._shutdown: TreeShutdown | None = None

    # ---- dispatch -------------------------------------------------------------------------------------------------
    def on_receive(self, message: object) -> object:
        result = self._dispatch(message)
        self._children.publish(self._on_tree_change)
        return result

    def _dispatch(self, message: object) -> object:
        match message:
            case ChildStateChanged():
                return self._handle_child_state_changed(message)
            case ChildInfoUpdated():
                return self._handle_child_info_updated(message)
            case ChildExited():
                return self._handle_child_exited(message)
            case StartChild():
                return self._handle_start_child(message)
            case StopChild():
                return self._handle_stop_child(message)
            case RestartChild():
                return self._handle_restart_child(message)
            case RestartDue():
                return self._handle_restart_due(message)
            case RetryDue():
                return self._handle_retry_due(message)
            case RetryDemanded():
                return self._handle_retry_demanded(message)
            case StopOverdue():
                return self._handle_stop_overdue(message)
            case WhichChildrenQuery():
                return self._children.infos()
            case ShutdownTree():
                return self._handle_shutdown_tree(message)
            case ShutdownDeadline():
                return self._handle_shutdown_deadline()
            case _:
                self.log.warning("ignored unexpected message {}", type(message).__name__)
                return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # A supervisor bug leaves the tree unsupervised: like a crashed OTP supervisor, take the runner down with it.
        self.log.critical("the supervisor crashed: {!r}", exception_value)
        self._escalate(f"the supervisor crashed: {exception_value!r}")

    # ---- starting ---------------------------------------------------------------------------------------------------
    def _handle_start_child(self, message: StartChild) -> StartAnswer:
        answer = self._start_child(message.spec)
        tell_if_alive(message.reply_to, answer)
        return answer

    def _start_child(self, spec: ChildSpec) -> StartAnswer:
        problems = spec.problems()
        if problems:
            self.log.error("refused child spec {}: {}", spec.child_id, "; ".join(problems))
            return StartRefused(child_id=spec.child_id, reason="invalid child spec: " + "; ".join(problems))
        if self._shutdown is not None:
            return StartRefused(child_id=spec.child_id, reason="the supervisor is shutting down")
        existing = self._children.get(spec.child_id)
        if existing is not None and existing.state not in (ChildState.FATAL, ChildState.STOPPED):
            return AlreadyStarted(child_id=spec.child_id, state=existing.state)
        if existing is not None:
            existing.log.info("started anew after it {}", "gave up" if existing.state is ChildState.FATAL else "was stopped")
            self._children.drop(existing)
            self._children.drop_stopped_bound_to(spec.child_id)  # rows of the old incarnation's helpers
        if self._on_child_added is not None:
            self._on_child_added(spec.child_id)
        # Started again after it gave up or was stopped: a restart, and the count goes on (it never goes back for
        # the same child id).
        restarts = existing.tracker.total_restarts + 1 if existing is not None else 0
        child = self._children.add(spec, restarts=restarts)
        error = self._children.spawn(child)
        if error is not None:
            self._children.remove(child, f"could not be started: {error}")
            return StartRefused(child_id=spec.child_id, reason=f"the child could not be created: {error}")
        return Started(child_id=spec.child_id, generation=child.generation)

    def _handle_restart_due(self, message: RestartDue) -> None:
        child = self._children.current(message.child_id, message.generation)
        if child is None or child.state is not ChildState.BACKOFF or self._shutdown is not None:
            return
        child.restart_timer = None
        error = self._children.spawn(child)
        if error is not None:
            self._child_ended(child, StartFailed(error=error))

    # ---- what children report ---------------------------------------------------------------------------------------
    def _handle_child_state_changed(self, message: ChildStateChanged) -> None:
        child = self._children.current(message.child_id, message.generation)
        if child is not None and child.ref is not None:
            child.reported(message.state, message.pid, self._clock.monotonic())

    def _handle_child_info_updated(self, message: ChildInfoUpdated) -> None:
        child = self._children.current(message.child_id, message.generation)
        if child is not None:
            child.extra.update(message.extra)
            child.changed()

    def _handle_child_exited(self, message: ChildExited) -> None:
        child = self._children.current(message.child_id, message.generation)
        if child is None or child.ref is None:
            debug(self.log, "stale exit of {} generation {}", message.child_id, message.generation)
            return
        self._child_ended(child, message.reason)

    def _child_ended(self, child: ChildRecord, reason: ExitReason) -> None:
        now = self._clock.monotonic()
        uptime = child.uptime_s(now)
        first_start = child.generation == 1 and not child.ran
        self._children.detach(child)
        reason = child.exited(reason, uptime_s=uptime, shutting_down=self._shutdown is not None)
        if self._shutdown is not None:
            self._children.remove(child, "the runner is shutting down")
            self._shutdown.next_tier()
            return
        if child.stop in ("stop", "forget"):
            keep = child.stop == "stop"
            child.to(ChildState.STOPPED, Event.STOPPED, "INFO", "stopped for good", reason="stopped")
            self._stopped(child, keep=keep)
            return
        if child.stop == "restart_by_hand":
            child.tracker.count_restart_by_hand()
            if self._children.spawn(child) is not None:
                self._child_ended(child, StartFailed(error="the factory failed"))
            return
        decision = child.tracker.decide(reason, now=now, uptime_s=uptime, first_start=first_start)
        match decision:
            case Forget():
                child.to(ChildState.STOPPED, Event.STOPPED, "INFO", "not restarted: {}", decision.reason,
                         reason=decision.reason)
                self._forget(child, "it ended")
            case GiveUp():
                self._give_up(child, decision)
            case Restart():
                child.to(ChildState.BACKOFF, Event.BACKOFF, "WARNING", "restarting in {:.2f}s (attempt {})",
                         decision.delay_s, decision.attempt + 1, attempt=decision.attempt + 1,
                         delay_s=round(decision.delay_s, 3))
                self._children.schedule_restart(child, decision.delay_s)

    # ---- giving up, and trying again ---------------------------------------------------------------------------
    def _give_up(self, child: ChildRecord, decision: GiveUp) -> None:
        if child.spec.on_give_up == "shut_down_runner":
            child.to(ChildState.FATAL, Event.FATAL, "ERROR", "gave up: {}", decision.reason, reason=decision.reason)
            self._children.close(child, f"it gave up: {decision.reason}")
            self._stop_bound_to(child.child_id, "gave up", keep=True)
            self._escalate(f"{child.child_id} gave up: {decision.reason}")
            return
        on_demand = child.spec.fatal_retry.on_demand
        when = [f"in {decision.retry_in_s:g}s"] if decision.retry_in_s is not None else []
        when += ["when a request needs it"] if on_demand else []
        child.to(ChildState.FATAL, Event.FATAL, "ERROR", "gave up: {}; {}", decision.reason,
                 "retrying " + " or ".join(when) if when else "not retried", reason=decision.reason)
        self._children.close(child, f"it gave up: {decision.reason}",
                             demand=self._children.demand_hook() if on_demand else None)
        self._stop_bound_to(child.child_id, "gave up", keep=True)
        if decision.retry_in_s is not None:
            self._children.schedule_retry(child, decision.retry_in_s,
                                          f"the restart-limit window of {decision.retry_in_s:g}s has passed")

    def _handle_retry_demanded(self, message: RetryDemanded) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.state is not ChildState.FATAL or self._shutdown is not None:
            return
        delay = child.tracker.demand_retry_in(self._clock.monotonic())
        if delay is None:
            return
        why = "a request needs it"
        if delay <= 0:
            self._retry(child, why)
        elif child.retry_at is None or child.retry_at > self._clock.monotonic() + delay:
            child.log.info("{}; retrying in {:.2f}s (its backoff since it gave up)", why, delay)
            self._children.schedule_retry(child, delay, why)

    def _handle_retry_due(self, message: RetryDue) -> None:
        child = self._children.current(message.child_id, message.generation)
        if child is None or child.state is not ChildState.FATAL or self._shutdown is not None:
            return
        self._retry(child, message.why)

    def _retry(self, child: ChildRecord, why: str) -> None:
        """Try a child that gave up again: the same child (its generations go on), with a new restart-limit window."""
        child.cancel_restart()
        child.to(None, Event.RETRYING, "WARNING", "retrying after it gave up: {}", why, reason=why)
        child.tracker.revive()
        self._respawn(child)

    def _respawn(self, child: ChildRecord) -> None:
        """The next incarnation of a child that is not running (BACKOFF, FATAL, STOPPED), then the children that
        were stopped with it (bound to it)."""
        self._children.reopen(child)  # messages wait for the new start
        error = self._children.spawn(child)
        if error is not None:
            self._child_ended(child, StartFailed(error=error))
            return
        for dependent in self._children.stopped_with(child.child_id):
            self._start_again(dependent, f"together with {child.child_id}")

    def _forget(self, child: ChildRecord, why: str) -> None:
        self._children.remove(child, why)
        self._stop_bound_to(child.child_id, "ended", keep=False)

    def _stopped(self, child: ChildRecord, *, keep: bool) -> None:
        """A child stopped for good: a STOPPED row (its last exit and extra stay), or gone when `keep` is False
        (the child it was bound to is gone)."""
        if not keep:
            self._forget(child, "it was stopped")
            return
        self._children.keep_stopped(child)
        self._stop_bound_to(child.child_id, "was stopped", keep=True)
        self._children.drop_stopped_past_bound()

    def _stop_bound_to(self, child_id: ChildId, what_happened: str, *, keep: bool) -> None:
        """systemd's BindsTo=: the children bound to `child_id` stop with it; they stay as STOPPED rows (`keep`,
        started again with it) while its own row stays, and go with it when it is gone."""
        for dependent in self._children.bound_to(child_id):
            self._stop_for_good(dependent, f"bound to {child_id}, which {what_happened}", keep=keep,
                                stopped_with=child_id)

    def _escalate(self, reason: str) -> None:
        self.log.critical("escalating: {}; the runner shuts down", reason)
        if self._on_escalate is not None:
            self._on_escalate(reason)

    # ---- stopping and restarting on request --------------------------------------------------------------------
    def _handle_stop_child(self, message: StopChild) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.state is ChildState.STOPPED:
            debug(self.log, "stop of {}: no such child, or stopped already", message.child_id)
            return
        self._stop_for_good(child, message.reason, keep=message.keep_row)

    def _stop_for_good(self, child: ChildRecord, reason: str, *, keep: bool,
                       stopped_with: ChildId | None = None) -> None:
        if child.state is ChildState.STOPPED:
            if not keep:
                self._forget(child, "it was stopped")
            return
        child.stopped_with = stopped_with
        if child.ref is None:  # BACKOFF or FATAL: nothing runs, so there is nothing to wait for
            child.cancel_restart()
            child.to(ChildState.STOPPED, Event.STOPPED, "INFO", "stopped while {}: {}", child.state.value, reason,
                     reason=reason)
            self._stopped(child, keep=keep)
            return
        stopping = child.state is ChildState.STOPPING
        child.stop = "stop" if keep else "forget"
        if stopping:  # a stop (a restart's) is under way already: it now ends in this one
            child.log.info("stop requested ({}) while stopping; it stays stopped", reason)
            return
        self._request_stop(child, reason)

    def _handle_restart_child(self, message: RestartChild) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.stop in ("stop", "forget") or self._shutdown is not None:
            return
        if child.state is ChildState.STOPPED:
            if message.by_hand:  # supervisorctl's restart of a stopped process: a start
                self._start_again(child, message.reason.describe())
            return
        if message.by_hand:
            child.to(None, Event.RESTARTED_BY_HAND, "INFO", "restart by hand ({}); not counted towards give-up",
                     message.reason.describe(), pid=child.pid, reason=message.reason.describe())
        if child.ref is None:
            if child.state is ChildState.FATAL:
                child.log.info("restart requested ({}) after it gave up; starting it afresh", message.reason.describe())
                child.tracker = child.new_tracker(child.tracker.total_restarts + 1)
            elif message.by_hand:
                child.tracker.count_restart_by_hand()
            child.cancel_restart()
            self._respawn(child)
            return
        if child.stop is None:
            child.stop, child.restart_reason = ("restart_by_hand" if message.by_hand else "restart"), message.reason
            self._request_stop(child, message.reason.describe())

    def _start_again(self, child: ChildRecord, why: str) -> None:
        """A STOPPED child started by hand: its own spec again (same port, same options)."""
        child.log.info("started again after it was stopped ({})", why)
        # A new restart-limit window and backoff; the restart count goes on (a counter never goes back).
        child.tracker, child.stopped_with = child.new_tracker(child.tracker.total_restarts + 1), None
        self._respawn(child)

    def _request_stop(self, child: ChildRecord, reason: str) -> None:
        self._children.request_stops([child], reason, deadline=self._shutdown.deadline if self._shutdown else None)

    def _handle_stop_overdue(self, message: StopOverdue) -> None:
        child = self._children.current(message.child_id, message.generation)
        if child is None or child.ref is None:
            return
        child.log.warning("did not stop within its grace and {:.1f}s more; stopping its actor", STOP_MARGIN_S)
        child.ref.stop(block=False)
        if self._shutdown is not None:
            self._shutdown.stuck(child)

    # ---- orderly shutdown -------------------------------------------------------------------------------------------
    def _handle_shutdown_tree(self, message: ShutdownTree) -> ShutdownDone:
        if self._shutdown is None:
            self._shutdown = TreeShutdown(self._children, grace_s=message.grace_s, clock=self._clock,
                                          ticker=self._ticker, supervisor=self.actor_ref, log=self.log)
            self._shutdown.begin()
        return self._shutdown.done

    def _handle_shutdown_deadline(self) -> None:
        if self._shutdown is not None:
            self._shutdown.deadline_passed()


__all__ = ["SupervisorActor"]
