"""SupervisorActor: a generic, OTP-shaped supervisor for pykka actors.

It starts children from specs (checked when they are added), asks the pure policy what to do each time one ends
(restart after a backoff, forget, or give up), keeps the child directory current so messages reach the right
incarnation, pushes a tree snapshot after every change, and stops everything in tier order within one deadline.
It knows nothing of what its children do: no services, languages or wire (docs/architecture.md §3).

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
from typing import TYPE_CHECKING, Any

import pykka
from loguru import logger

from kernel_runner.ids import ChildId
from kernel_runner.observability.debug_lines import debug
from kernel_runner.observability.events import Event, emit
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.directory import ChildDirectory
from kernel_runner.supervision.exits import ExitReason, StartFailed
from kernel_runner.supervision.policy import Forget, GiveUp, Restart
from kernel_runner.supervision.record import ChildRecord, RestartDue, RetryDemanded, RetryDue, ShutdownDeadline, StopOverdue
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.spec import (
    AlreadyStarted,
    ChildContext,
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
    StopRequested,
    TreeSnapshot,
    WhichChildrenQuery,
)
from kernel_runner.supervision.timers import Ticker, TimerHandle

if TYPE_CHECKING:
    from loguru import Logger

# A child asked to stop gets its spec's grace plus this much before the supervisor stops its actor itself.
STOP_MARGIN_S = 1.0
# STOPPED rows kept in the tree (a runner that starts and stops services under ever new names stays bounded).
MAX_STOPPED_ROWS = 100


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
        self._directory = directory
        self._clock = clock
        self._ticker = ticker
        self._on_tree_change = on_tree_change
        # Told a child's id before its first line is logged (the runner opens the child's log file there).
        self._on_child_added = on_child_added
        self._on_escalate = on_escalate
        self._rng = rng or random.Random()
        self._children: dict[ChildId, ChildRecord] = {}  # in start order
        self._order = 0
        self._stopped_seq = 0
        self._version = 0
        self._dirty = False
        self._shutdown_done: ShutdownDone | None = None
        self._shutdown_tier: int | None = None
        self._shutdown_timer: TimerHandle | None = None
        self._shutdown_deadline: float | None = None

    # ---- dispatch -------------------------------------------------------------------------------------------------
    def on_receive(self, message: object) -> object:
        result = self._dispatch(message)
        if self._dirty:
            self._publish()
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
                return [child.info() for child in self._children.values()]
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
        if self._shutdown_done is not None:
            return StartRefused(child_id=spec.child_id, reason="the supervisor is shutting down")
        existing = self._children.get(spec.child_id)
        if existing is not None and existing.state not in (ChildState.FATAL, ChildState.STOPPED):
            return AlreadyStarted(child_id=spec.child_id, state=existing.state)
        if existing is not None:
            self.log.bind(child=spec.child_id).info(
                "started anew after it {}", "gave up" if existing.state is ChildState.FATAL else "was stopped")
            if existing.restart_timer is not None:
                existing.restart_timer.cancel()
            del self._children[spec.child_id]
            self._drop_stopped_bound_to(spec.child_id)  # rows of the old incarnation's helpers
        self._order += 1
        if self._on_child_added is not None:
            self._on_child_added(spec.child_id)
        # Started again after it gave up or was stopped: a restart, and the count goes on (it never goes back for
        # the same child id).
        restarts = existing.tracker.total_restarts + 1 if existing is not None else 0
        child = ChildRecord(spec, self._order, self._rng, restarts=restarts)
        self._children[spec.child_id] = child
        self._directory.register(spec.child_id, spec.reject)
        error = self._spawn(child)
        if error is not None:
            del self._children[spec.child_id]
            self._directory.close(spec.child_id, f"could not be started: {error}")
            self._dirty = True
            return StartRefused(child_id=spec.child_id, reason=f"the child could not be created: {error}")
        return Started(child_id=spec.child_id, generation=child.generation)

    def _spawn(self, child: ChildRecord) -> str | None:
        """Start the next incarnation; returns the factory's error, if it raised."""
        child.generation += 1
        child.state, child.pid, child.running_since, child.ran = ChildState.STARTING, None, None, False
        child.extra, child.stop, child.restart_reason = {}, None, None
        child.changed()
        self._dirty = True
        ctx = ChildContext(child_id=child.child_id, generation=child.generation, supervisor=self.actor_ref,
                           directory=self._directory, clock=self._clock, ticker=self._ticker)
        # Logged before the actor exists: a child's story (its log file, `ctl tail`) begins with this line.
        emit(self.log.bind(child=child.child_id), "INFO", Event.STARTING, "starting (generation {})", child.generation,
             generation=child.generation)
        try:
            child.ref = child.spec.factory(ctx)
        except Exception as exc:  # noqa: BLE001 - a factory that raises is a failed start like any other
            self.log.bind(child=child.child_id).opt(exception=exc).error("factory failed: {!r}", exc)
            child.ref = None
            return repr(exc)
        self._directory.attach(child.child_id, child.generation, child.ref)
        return None

    def _handle_restart_due(self, message: RestartDue) -> None:
        child = self._current(message.child_id, message.generation)
        if child is None or child.state is not ChildState.BACKOFF or self._shutdown_done is not None:
            return
        child.restart_timer = None
        error = self._spawn(child)
        if error is not None:
            self._child_ended(child, StartFailed(error=error))

    # ---- what children report ---------------------------------------------------------------------------------------
    def _current(self, child_id: ChildId, generation: int) -> ChildRecord | None:
        child = self._children.get(child_id)
        return child if child is not None and child.generation == generation else None

    def _handle_child_state_changed(self, message: ChildStateChanged) -> None:
        child = self._current(message.child_id, message.generation)
        if child is None or child.ref is None:
            return
        if child.stop is None:  # once a stop was asked for, the child stays STOPPING whatever it reports
            child.state = message.state
        log = self.log.bind(child=child.child_id)
        if message.pid is not None and message.pid != child.pid:
            child.pid = message.pid
            emit(log, "INFO", Event.SPAWNED, "spawned with pid {}", message.pid, pid=message.pid,
                 generation=child.generation)
        if message.state is ChildState.RUNNING and not child.ran:
            child.ran, child.running_since = True, self._clock.monotonic()
            emit(log, "INFO", Event.RUNNING, "entered RUNNING state" + (f" (pid {child.pid})" if child.pid else ""),
                 pid=child.pid, generation=child.generation)
        child.changed()
        self._dirty = True

    def _handle_child_info_updated(self, message: ChildInfoUpdated) -> None:
        child = self._current(message.child_id, message.generation)
        if child is not None:
            child.extra.update(message.extra)
            child.changed()
            self._dirty = True

    def _handle_child_exited(self, message: ChildExited) -> None:
        child = self._current(message.child_id, message.generation)
        if child is None or child.ref is None:
            debug(self.log, "stale exit of {} generation {}", message.child_id, message.generation)
            return
        self._child_ended(child, message.reason)

    def _child_ended(self, child: ChildRecord, reason: ExitReason) -> None:
        now = self._clock.monotonic()
        log = self.log.bind(child=child.child_id)
        uptime = now - child.running_since if child.running_since is not None else None
        first_start = child.generation == 1 and not child.ran
        pid, ended = child.pid, reason
        self._directory.detach(child.child_id, child.generation)
        for timer in (child.stop_timer, child.restart_timer):
            if timer is not None:
                timer.cancel()
        child.ref, child.pid, child.running_since, child.state = None, None, None, ChildState.EXITED
        if child.stop in ("restart", "restart_by_hand") and child.restart_reason is not None:
            # Logged and shown as why it was asked for (an operator's restart, a failed health check), and the
            # policy judges an automatic restart by it; how the process ended goes with the `exited` record.
            reason = child.restart_reason
        child.last_exit = reason.describe()
        child.changed()
        self._dirty = True
        self._log_exit(log, child, reason, ended, pid=pid, uptime_s=uptime)
        if self._shutdown_done is not None:
            self._remove(child, "the runner is shutting down")
            self._continue_shutdown()
            return
        if child.stop in ("stop", "forget"):
            emit(log, "INFO", Event.STOPPED, "stopped for good", reason="stopped")
            self._stopped(child, keep=child.stop == "stop")
            return
        if child.stop == "restart_by_hand":
            child.tracker.count_restart_by_hand()
            if self._spawn(child) is not None:
                self._child_ended(child, StartFailed(error="the factory failed"))
            return
        decision = child.tracker.decide(reason, now=now, uptime_s=uptime, first_start=first_start)
        match decision:
            case Forget():
                emit(log, "INFO", Event.STOPPED, "not restarted: {}", decision.reason, reason=decision.reason)
                self._forget(child, "it ended")
            case GiveUp():
                self._give_up(child, decision)
            case Restart():
                child.state = ChildState.BACKOFF
                emit(log, "WARNING", Event.BACKOFF, "restarting in {:.2f}s (attempt {})", decision.delay_s,
                     decision.attempt + 1, attempt=decision.attempt + 1, delay_s=round(decision.delay_s, 3))
                child.restart_timer = self._ticker.schedule(
                    decision.delay_s, self.actor_ref, RestartDue(child_id=child.child_id, generation=child.generation)
                )

    def _log_exit(self, log: Logger, child: ChildRecord, reason: ExitReason, ended: ExitReason, *, pid: int | None,
                  uptime_s: float | None) -> None:
        """The one line per exit: why, how its process ended (`ended`), and whether anyone asked for it
        (supervisord's "expected")."""
        asked = child.stop is not None or self._shutdown_done is not None
        ran = f" after {uptime_s:.1f}s" if uptime_s is not None else " before it was running"
        code = getattr(ended, "code", None)
        number = getattr(ended, "signal", None)
        emit(log, "INFO" if asked or reason.kind == "normal" else "WARNING", Event.EXITED, "exited: {}{} ({})",
             reason.describe(), ran, "expected" if asked else "not expected",
             pid=pid, exit_code=code, signal=number, generation=child.generation,
             uptime_s=round(uptime_s, 3) if uptime_s is not None else None, reason=reason.kind)

    # ---- giving up, and trying again ---------------------------------------------------------------------------
    def _give_up(self, child: ChildRecord, decision: GiveUp) -> None:
        log = self.log.bind(child=child.child_id)
        child.state = ChildState.FATAL
        child.changed()
        if child.spec.on_give_up == "shut_down_runner":
            emit(log, "ERROR", Event.FATAL, "gave up: {}", decision.reason, reason=decision.reason)
            self._directory.close(child.child_id, f"it gave up: {decision.reason}")
            self._stop_bound_to(child.child_id, "gave up", keep=True)
            self._escalate(f"{child.child_id} gave up: {decision.reason}")
            return
        on_demand = child.spec.fatal_retry.on_demand
        when = [f"in {decision.retry_in_s:g}s"] if decision.retry_in_s is not None else []
        when += ["when a request needs it"] if on_demand else []
        emit(log, "ERROR", Event.FATAL, "gave up: {}; {}", decision.reason,
             "retrying " + " or ".join(when) if when else "not retried", reason=decision.reason)
        self._directory.close(child.child_id, f"it gave up: {decision.reason}",
                              demand=self._demand_hook() if on_demand else None)
        self._stop_bound_to(child.child_id, "gave up", keep=True)
        if decision.retry_in_s is not None:
            self._schedule_retry(child, decision.retry_in_s,
                                 f"the restart-limit window of {decision.retry_in_s:g}s has passed")

    def _schedule_retry(self, child: ChildRecord, delay_s: float, why: str) -> None:
        if child.restart_timer is not None:
            child.restart_timer.cancel()
        child.retry_at = self._clock.monotonic() + delay_s
        child.restart_timer = self._ticker.schedule(delay_s, self.actor_ref, RetryDue(
            child_id=child.child_id, generation=child.generation, why=why))

    def _demand_hook(self) -> Callable[[ChildId], None]:
        """What the directory calls, from the sender's thread, when a message arrives for a child that gave up."""
        supervisor = self.actor_ref

        def demanded(child_id: ChildId) -> None:
            tell_if_alive(supervisor, RetryDemanded(child_id=child_id))

        return demanded

    def _handle_retry_demanded(self, message: RetryDemanded) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.state is not ChildState.FATAL or self._shutdown_done is not None:
            return
        delay = child.tracker.demand_retry_in(self._clock.monotonic())
        if delay is None:
            return
        why = "a request needs it"
        if delay <= 0:
            self._retry(child, why)
        elif child.retry_at is None or child.retry_at > self._clock.monotonic() + delay:
            self.log.bind(child=child.child_id).info("{}; retrying in {:.2f}s (its backoff since it gave up)", why, delay)
            self._schedule_retry(child, delay, why)

    def _handle_retry_due(self, message: RetryDue) -> None:
        child = self._current(message.child_id, message.generation)
        if child is None or child.state is not ChildState.FATAL or self._shutdown_done is not None:
            return
        self._retry(child, message.why)

    def _retry(self, child: ChildRecord, why: str) -> None:
        """Try a child that gave up again: the same child (its generations go on), with a new restart-limit window."""
        if child.restart_timer is not None:
            child.restart_timer.cancel()
        child.restart_timer, child.retry_at = None, None
        emit(self.log.bind(child=child.child_id), "WARNING", Event.RETRYING, "retrying after it gave up: {}", why,
             reason=why)
        child.tracker.revive()
        self._respawn(child)

    def _respawn(self, child: ChildRecord) -> None:
        """The next incarnation of a child that is not running (BACKOFF, FATAL, STOPPED), then the children that
        were stopped with it (bound to it)."""
        self._directory.register(child.child_id, child.spec.reject)  # reopens it: messages wait for the new start
        error = self._spawn(child)
        if error is not None:
            self._child_ended(child, StartFailed(error=error))
            return
        for dependent in [c for c in self._children.values()
                          if c.state is ChildState.STOPPED and c.stopped_with == child.child_id]:
            self._start_again(dependent, f"together with {child.child_id}")

    def _remove(self, child: ChildRecord, why: str) -> None:
        self._children.pop(child.child_id, None)
        self._directory.close(child.child_id, why)
        self._dirty = True

    def _forget(self, child: ChildRecord, why: str) -> None:
        self._remove(child, why)
        self._stop_bound_to(child.child_id, "ended", keep=False)

    def _stopped(self, child: ChildRecord, *, keep: bool) -> None:
        """A child stopped for good: a STOPPED row (its last exit and extra stay), or gone when `keep` is False
        (the child it was bound to is gone)."""
        if not keep:
            self._forget(child, "it was stopped")
            return
        child.state, child.stop, child.restart_timer, child.retry_at = ChildState.STOPPED, None, None, None
        self._stopped_seq += 1
        child.stopped_seq = self._stopped_seq
        child.changed()
        self._dirty = True
        self._directory.close(child.child_id, "it was stopped")
        self._stop_bound_to(child.child_id, "was stopped", keep=True)
        stopped = sorted((c for c in self._children.values() if c.state is ChildState.STOPPED),
                         key=lambda c: c.stopped_seq)
        for oldest in stopped[:max(0, len(stopped) - MAX_STOPPED_ROWS)]:
            debug(self.log.bind(child=oldest.child_id), "STOPPED row dropped: more than {} kept", MAX_STOPPED_ROWS)
            self._remove(oldest, "it was stopped")
            self._drop_stopped_bound_to(oldest.child_id)

    def _drop_stopped_bound_to(self, child_id: ChildId) -> None:
        for dependent in [c for c in self._children.values()
                          if c.spec.binds_to == child_id and c.state is ChildState.STOPPED]:
            self._remove(dependent, "it was stopped")

    def _stop_bound_to(self, child_id: ChildId, what_happened: str, *, keep: bool) -> None:
        """systemd's BindsTo=: the children bound to `child_id` stop with it; they stay as STOPPED rows (`keep`,
        started again with it) while its own row stays, and go with it when it is gone."""
        for dependent in [c for c in self._children.values() if c.spec.binds_to == child_id]:
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
            if child.restart_timer is not None:
                child.restart_timer.cancel()
            emit(self.log.bind(child=child.child_id), "INFO", Event.STOPPED, "stopped while {}: {}",
                 child.state.value, reason, reason=reason)
            self._stopped(child, keep=keep)
            return
        stopping = child.state is ChildState.STOPPING
        child.stop = "stop" if keep else "forget"
        if stopping:  # a stop (a restart's) is under way already: it now ends in this one
            self.log.bind(child=child.child_id).info("stop requested ({}) while stopping; it stays stopped", reason)
            return
        self._request_stop(child, reason)

    def _handle_restart_child(self, message: RestartChild) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.stop in ("stop", "forget") or self._shutdown_done is not None:
            return
        log = self.log.bind(child=child.child_id)
        if child.state is ChildState.STOPPED:
            if message.by_hand:  # supervisorctl's restart of a stopped process: a start
                self._start_again(child, message.reason.describe())
            return
        if message.by_hand:
            emit(log, "INFO", Event.RESTARTED_BY_HAND, "restart by hand ({}); not counted towards give-up",
                 message.reason.describe(), pid=child.pid, reason=message.reason.describe())
        if child.ref is None:
            if child.state is ChildState.FATAL:
                log.info("restart requested ({}) after it gave up; starting it afresh", message.reason.describe())
                child.tracker = child.new_tracker(child.tracker.total_restarts + 1)
            elif message.by_hand:
                child.tracker.count_restart_by_hand()
            if child.restart_timer is not None:
                child.restart_timer.cancel()
            child.restart_timer, child.retry_at = None, None
            self._respawn(child)
            return
        if child.stop is None:
            child.stop, child.restart_reason = ("restart_by_hand" if message.by_hand else "restart"), message.reason
            self._request_stop(child, message.reason.describe())

    def _start_again(self, child: ChildRecord, why: str) -> None:
        """A STOPPED child started by hand: its own spec again (same port, same options)."""
        self.log.bind(child=child.child_id).info("started again after it was stopped ({})", why)
        # A new restart-limit window and backoff; the restart count goes on (a counter never goes back).
        child.tracker, child.stopped_with = child.new_tracker(child.tracker.total_restarts + 1), None
        self._respawn(child)

    def _request_stop(self, child: ChildRecord, reason: str) -> None:
        self._request_stops([child], reason)

    def _request_stops(self, children: list[ChildRecord], reason: str) -> None:
        """Ask each child to stop within its grace. Every request is told before anything else is done (timers,
        log lines), so a tier of 100 stops in parallel: the children that already stop compete for the GIL with
        this loop, which would otherwise hand out one request per time slice."""
        now = self._clock.monotonic()
        graces: dict[float, list[ChildRecord]] = {}
        for child in children:
            assert child.ref is not None
            child.state = ChildState.STOPPING
            child.changed()
            grace_s = child.spec.shutdown_s
            if self._shutdown_deadline is not None:  # no child's grace reaches past the runner's one deadline
                grace_s = max(0.0, min(grace_s, self._shutdown_deadline - now - STOP_MARGIN_S))
            tell_if_alive(child.ref, StopRequested(reason=reason, grace_s=grace_s))
            graces.setdefault(grace_s, []).append(child)
        self._dirty = True
        for grace_s, same in graces.items():
            timers = self._ticker.schedule_many(grace_s + STOP_MARGIN_S, [
                (self.actor_ref, StopOverdue(child_id=c.child_id, generation=c.generation)) for c in same])
            for child, timer in zip(same, timers, strict=True):
                child.stop_timer = timer
        for child in children:
            emit(self.log.bind(child=child.child_id), "INFO", Event.STOPPING, "stopping: {}", reason, pid=child.pid,
                 reason=reason)

    def _handle_stop_overdue(self, message: StopOverdue) -> None:
        child = self._current(message.child_id, message.generation)
        if child is None or child.ref is None:
            return
        self.log.bind(child=child.child_id).warning("did not stop within its grace and {:.1f}s more; stopping its actor",
                                                    STOP_MARGIN_S)
        child.ref.stop(block=False)
        if self._shutdown_done is not None:
            # A stuck actor may never report its exit: the lower tiers do not wait for it any longer.
            self._shutdown_done.forced.append(child.child_id)
            self._remove(child, "the runner is shutting down")
            self._continue_shutdown()

    # ---- orderly shutdown -------------------------------------------------------------------------------------------
    def _handle_shutdown_tree(self, message: ShutdownTree) -> ShutdownDone:
        if self._shutdown_done is not None:
            return self._shutdown_done
        self._shutdown_done = ShutdownDone()
        self._shutdown_deadline = self._clock.monotonic() + message.grace_s
        self.log.info("shutting down {} child(ren) within {:.1f}s", len(self._children), message.grace_s)
        self._shutdown_timer = self._ticker.schedule(message.grace_s, self.actor_ref, ShutdownDeadline())
        for child in [c for c in self._children.values() if c.ref is None]:
            if child.restart_timer is not None:
                child.restart_timer.cancel()
            self._remove(child, "the runner is shutting down")
        self._continue_shutdown()
        return self._shutdown_done

    def _continue_shutdown(self) -> None:
        if self._shutdown_done is None:
            return
        if not self._children:
            self._shutdown_complete()
            return
        top = max(child.spec.tier for child in self._children.values())
        if self._shutdown_tier == top:
            return
        self._shutdown_tier = top
        self._request_stops([child for child in self._children.values()
                             if child.spec.tier == top and child.state is not ChildState.STOPPING], "runner shutdown")

    def _handle_shutdown_deadline(self) -> None:
        if self._shutdown_done is None or self._shutdown_done.is_set():
            return
        stuck = list(self._children.values())
        self.log.error("shutdown deadline passed; forcing stop of {}", ", ".join(c.child_id for c in stuck))
        self._shutdown_done.forced.extend(child.child_id for child in stuck)
        for child in stuck:
            if child.ref is not None:
                child.ref.stop(block=False)
            self._remove(child, "the runner is shutting down")
        self._shutdown_complete()

    def _shutdown_complete(self) -> None:
        assert self._shutdown_done is not None
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        self.log.info("all children stopped")
        self._shutdown_done.set()

    # ---- the tree report ----------------------------------------------------------------------------------------------
    def _publish(self) -> None:
        self._dirty = False
        self._version += 1
        if self._on_tree_change is not None:
            snapshot = TreeSnapshot(version=self._version, children=tuple(c.info() for c in self._children.values()))
            self._on_tree_change(snapshot)


__all__ = ["STOP_MARGIN_S", "SupervisorActor"]
