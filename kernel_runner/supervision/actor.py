"""SupervisedActor, the base of every child actor; PhasedActor, one whose life is a declared phase machine; and
PhaseMachine, the one way a phase changes.

SupervisedActor guarantees what the supervisor relies on: exactly one ChildExited per incarnation, with a reason,
whatever way the incarnation ends (a handler raising, even SystemExit; on_start failing; a requested stop; being
stopped from outside); and no work that needs an answer vanishes with it: once it is ending it detaches from the
child directory, and hands back what it will not do, so the next incarnation gets it in order
(docs/architecture.md §3).

PhasedActor adds the life of one incarnation: the subclass declares its phases, their allowed edges and the
ChildState the supervisor sees in each (a Lifecycle); the base owns `phase`, checks and logs every edge, and tells
the supervisor the state the new phase maps to (docs/architecture.md §3.4).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import attrs
import pykka
from loguru import logger

from kernel_runner.ids import ChildId
from kernel_runner.observability.debug_lines import debug
from kernel_runner.supervision.exits import Crashed, ExitReason, NormalExit, ShutdownExit, StartFailed
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.spec import (
    ChildContext,
    ChildExited,
    ChildInfoUpdated,
    ChildState,
    ChildStateChanged,
    StopRequested,
)
from kernel_runner.supervision.timers import TimerHandle

if TYPE_CHECKING:
    from loguru import Logger

P = TypeVar("P", bound=enum.Enum)


class InvalidTransition(RuntimeError):
    """A phase change the actor's table does not allow: a bug, so the actor crashes and is restarted."""


class PhaseMachine(Generic[P]):
    """One phase field, changed in one place that checks the edge and logs it (supervisord's transition())."""

    def __init__(
        self,
        initial: P,
        edges: Mapping[P, Collection[P]],
        *,
        log: Callable[[], Logger] | None,
        on_change: Callable[[P, P], None] | None = None,
    ) -> None:
        """`log` gives the owner's current logger, so the lines carry whatever it binds later (its pid); None: the
        owner logs each change itself (the supervisor's child record logs it as a lifecycle event)."""
        self._phase = initial
        self._edges = edges
        self._log = log
        self._on_change = on_change

    @property
    def phase(self) -> P:
        return self._phase

    def allows(self, new: P) -> bool:
        return new in self._edges.get(self._phase, ())

    def to(self, new: P, why: str = "") -> None:
        old = self._phase
        if not self.allows(new):
            raise InvalidTransition(f"{old.name} -> {new.name} is not allowed" + (f" ({why})" if why else ""))
        self._phase = new
        if self._log is not None:
            debug(self._log(), "phase {} -> {}{}", old.name, new.name, f": {why}" if why else "")
        if self._on_change is not None:
            self._on_change(old, new)


@attrs.frozen
class Lifecycle(Generic[P]):
    """What a PhasedActor declares about its life: the first phase, every allowed edge, and the ChildState the
    supervisor sees in each phase (None: nothing is reported; the end is the ChildExited)."""

    initial: P
    transitions: Mapping[P, frozenset[P]]
    child_states: Mapping[P, ChildState | None]

    def __attrs_post_init__(self) -> None:
        # Checked when the actor's module is imported: a phase left out of a table is a bug found before any run.
        phases = set(type(self.initial))
        targets = {target for edges in self.transitions.values() for target in edges}
        if set(self.transitions) != phases or set(self.child_states) != phases or not targets <= phases:
            raise ValueError(f"the lifecycle of {type(self.initial).__name__} must name every phase, and only them, "
                             "in its transitions and its child states")


class SupervisedActor(pykka.ThreadingActor):
    """Wraps start, handlers and stop so every ending becomes one ChildExited told to the supervisor.

    Subclasses implement `start_child`, `handle` and `cleanup`, and end themselves with `finish(reason)`; the
    supervisor, never the actor, decides what happens next.
    """

    # Messages that need an answer to someone: an ending incarnation hands them back instead of dropping them.
    redeliverable: ClassVar[tuple[type, ...]] = ()

    def __init__(self, *, ctx: ChildContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.child_id = ctx.child_id
        self.generation = ctx.generation
        self.log: Logger = logger.bind(child=ctx.child_id)
        self._exit_reported = False
        # What the supervisor holds this incarnation to be: it marks every new one STARTING, with no pid yet.
        self._reported: tuple[ChildState, int | None] = (ChildState.STARTING, None)
        self._finish_reason: ExitReason | None = None
        self._cleaned_up = False

    # ---- hooks for subclasses ---------------------------------------------------------------------------------------
    def start_child(self) -> None:
        """Create sockets, threads and processes here (never in __init__, which runs in the caller's thread)."""

    def handle(self, message: object) -> object:
        self.log.warning("ignored unexpected message {}", type(message).__name__)
        return None

    def cleanup(self) -> None:
        """Release what start_child made; must be safe after a partial start. Not called twice."""

    def request_stop(self, message: StopRequested) -> None:
        """Default graceful stop: none needed. Process owners override it (see procs.stop_process)."""
        self.finish(ShutdownExit())

    # ---- helpers ----------------------------------------------------------------------------------------------------
    def finish(self, reason: ExitReason) -> None:
        """End this incarnation with `reason` (the first one given counts); messages sent later wait for the next."""
        if self._finish_reason is None:
            self._finish_reason = reason
            self.ctx.directory.detach(self.child_id, self.generation)
        self.stop()

    def set_state(self, state: ChildState | None, *, pid: int | None = None) -> None:
        """Tell the supervisor this incarnation's state, and its pid once known; a repeat is not sent (None: nothing)."""
        last_state, last_pid = self._reported
        if state is None or (state is last_state and pid in (None, last_pid)):
            return
        self._reported = (state, pid if pid is not None else last_pid)
        tell_if_alive(self.ctx.supervisor, ChildStateChanged(
            child_id=self.child_id, generation=self.generation, state=state, pid=pid))

    def update_info(self, extra: Mapping[str, Any]) -> None:
        tell_if_alive(self.ctx.supervisor, ChildInfoUpdated(
            child_id=self.child_id, generation=self.generation, extra=extra))

    def schedule(self, delay_s: float, message: object) -> TimerHandle:
        return self.ctx.ticker.schedule(delay_s, self.actor_ref, message)

    def tell_child(self, child_id: ChildId, message: object) -> None:
        """Address a sibling by id; it reaches whichever incarnation is current (or its reject answer)."""
        self.ctx.directory.tell(child_id, message)

    # ---- pykka hooks: final -----------------------------------------------------------------------------------------
    def on_start(self) -> None:
        try:
            self.start_child()
        except BaseException as exc:  # noqa: BLE001 - a SystemExit here must not reach pykka's stop_all
            self.log.opt(exception=exc).error("start failed: {!r}", exc)
            self.finish(StartFailed(error=repr(exc)))

    def on_receive(self, message: object) -> object:
        if self._finish_reason is not None:
            self._hand_back(message)
            return None
        try:
            if isinstance(message, StopRequested):
                return self.request_stop(message)
            return self.handle(message)
        except BaseException as exc:  # noqa: BLE001 - any handler failure becomes one Crashed report
            self.log.opt(exception=exc).error("crashed handling {}: {!r}", type(message).__name__, exc)
            self.finish(Crashed(error=repr(exc)))
            return None

    def on_stop(self) -> None:
        self._end_incarnation(self._finish_reason or NormalExit())

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._end_incarnation(Crashed(error=repr(exception_value)))

    def _end_incarnation(self, reason: ExitReason) -> None:
        self.ctx.directory.detach(self.child_id, self.generation)
        if not self._cleaned_up:
            self._cleaned_up = True
            try:
                self.cleanup()
            except BaseException as exc:  # noqa: BLE001 - cleanup must not stop the report
                self.log.opt(exception=exc).error("cleanup failed: {!r}", exc)
        self._drain_inbox()
        if not self._exit_reported:
            self._exit_reported = True
            tell_if_alive(self.ctx.supervisor, ChildExited(
                child_id=self.child_id, generation=self.generation, reason=reason))

    def _hand_back(self, message: object) -> None:
        """Work that needs an answer must not vanish with this incarnation (someone would wait for ever)."""
        if isinstance(message, self.redeliverable):
            debug(self.log, "ending; {} handed back for the next incarnation", type(message).__name__)
            self.ctx.directory.hand_back(self.child_id, self.generation, message)
        else:
            debug(self.log, "ending; ignored {}", type(message).__name__)

    def _drain_inbox(self) -> None:
        """pykka drops tells still queued behind the stop; hand them back instead (asks get ActorDeadError)."""
        # Only this thread takes from the inbox, so get() after a non-empty check never blocks.
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if envelope.reply_to is not None:
                dead = pykka.ActorDeadError(f"{self.child_id} stopped before handling the message")
                envelope.reply_to.set_exception(exc_info=(pykka.ActorDeadError, dead, None))
            elif not isinstance(envelope.message, StopRequested):
                self._hand_back(envelope.message)


class PhasedActor(SupervisedActor, Generic[P]):
    """A SupervisedActor whose life is its class's `lifecycle`: `phase` changes only through `to_phase`, which checks
    the edge, logs it and reports the new phase's ChildState (with `reported_pid()`) to the supervisor."""

    lifecycle: ClassVar[Lifecycle[Any]]

    def __init__(self, *, ctx: ChildContext, initial_phase: P | None = None) -> None:
        """`initial_phase`: where this incarnation starts, when not the lifecycle's (one that goes on from the last)."""
        super().__init__(ctx=ctx)
        first: P = initial_phase if initial_phase is not None else self.lifecycle.initial
        self._life: PhaseMachine[P] = PhaseMachine(
            first, self.lifecycle.transitions, log=lambda: self.log, on_change=self._phase_changed)

    @property
    def phase(self) -> P:
        return self._life.phase

    def to_phase(self, new: P, why: str = "") -> None:
        """The one way `phase` changes: an edge the lifecycle lacks raises InvalidTransition (a bug: a crash)."""
        self._life.to(new, why)

    def report_phase(self) -> None:
        """Tell the supervisor the current phase's state (sent only when it, or the pid, changed): after every edge,
        and by a subclass whose first phase already means more than STARTING."""
        self.set_state(self.lifecycle.child_states[self.phase], pid=self.reported_pid())

    # ---- hooks for subclasses ---------------------------------------------------------------------------------------
    def reported_pid(self) -> int | None:
        """The pid the supervisor shows with the state, once known (a process owner's)."""
        return None

    def phase_changed(self, old: P, new: P) -> None:
        """Called after each edge, before the state is reported (an actor that keeps its phase elsewhere too)."""

    def _phase_changed(self, old: P, new: P) -> None:
        self.phase_changed(old, new)
        self.report_phase()


__all__ = ["InvalidTransition", "Lifecycle", "PhaseMachine", "PhasedActor", "SupervisedActor"]
