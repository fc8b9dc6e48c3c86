"""SupervisedActor: the one base every child actor uses, so each child reports its end exactly once, with a reason."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pykka
from loguru import logger

from kernel_runner.clock import Clock
from kernel_runner.config import RunnerConfig
from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    ChildExited,
    ChildInfoUpdated,
    ChildState,
    ChildStateChanged,
    CompleteCode,
    Crashed,
    ExitReason,
    NormalExit,
    Output,
    RunTask,
    ShutdownExit,
    StartFailed,
    StopRequested,
    StreamName,
    ToAgent,
    Undelivered,
)
from kernel_runner.timers import Ticker

# Messages that need an answer to the agent; everything else (ticks, process events) belongs to one incarnation.
REDELIVERABLE = (RunTask, CompleteCode)

if TYPE_CHECKING:
    from loguru import Logger


class RouterLink:
    """The current Router ref (it changes when the Router restarts) plus the output credits pumps take.

    A pump blocks on a credit before it tells an Output; the Router returns the credit once the frames
    left the process. That is the end-to-end backpressure: agent → router outbox → pump → OS pipe → child.
    """

    def __init__(self, credits: int) -> None:
        self._ref: pykka.ActorRef[Any] | None = None
        self._credits = threading.BoundedSemaphore(credits)
        self.closed = threading.Event()

    def attach(self, ref: pykka.ActorRef[Any]) -> None:
        self._ref = ref

    def tell(self, message: ToAgent) -> None:
        ref = self._ref
        if ref is None:
            logger.bind(child="router-link").warning("no router yet; dropped {}", type(message).__name__)
            return
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            logger.bind(child="router-link").warning("router is gone; dropped {}", type(message).__name__)

    def send_output(self, stream: StreamName, data: bytes) -> None:
        """Blocks (in a pump thread, never an actor) until the router has room; gives up once the runner stops."""
        while not self._credits.acquire(timeout=0.1):
            if self.closed.is_set():
                return
        if self.closed.is_set():
            self.return_credit()
            return
        self.tell(Output(stream=stream, data=data, credited=True))

    def return_credit(self) -> None:
        try:
            self._credits.release()
        except ValueError:
            pass


@attrs.define(kw_only=True)
class ChildContext:
    """What a child needs from the tree, passed in at construction so nothing is looked up in a registry."""

    child_id: ChildId
    generation: int
    supervisor: pykka.ActorRef[Any]
    router: RouterLink
    config: RunnerConfig
    clock: Clock
    ticker: Ticker
    # spec §1.4: the child env (defaults, environ.txt, PATH promotions) for batch, query and service children.
    env: Mapping[str, str] = attrs.field(factory=dict)
    # The runner's own environment plus environ.txt: what the Jupyter kernel and the terminal shell get (spec §1.4).
    runner_env: Mapping[str, str] = attrs.field(factory=dict)


class SupervisedActor(pykka.ThreadingActor):
    """Wraps start, handlers and stop so every failure becomes one ChildExited told to the supervisor.

    Subclasses implement `start_child`, `handle` and `cleanup`; they end themselves with `finish(reason)`.
    """

    def __init__(self, *, ctx: ChildContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.child_id = ctx.child_id
        self.generation = ctx.generation
        self.log: Logger = logger.bind(child=ctx.child_id)
        self._exit_reported = False
        self._finish_reason: ExitReason | None = None
        self._cleaned_up = False

    # ---- hooks for subclasses -------------------------------------------------------------
    def start_child(self) -> None:
        """Create sockets, threads and processes here (never in __init__, which runs in the caller's thread)."""

    def handle(self, message: object) -> object:
        self.log.warning("ignored unexpected message {}", type(message).__name__)
        return None

    def cleanup(self) -> None:
        """Release what start_child made; must be safe to call after a partial start."""

    def request_stop(self, message: StopRequested) -> None:
        """Default graceful stop: none needed. Process owners override to signal, wait and escalate."""
        self.finish(ShutdownExit())

    # ---- helpers -------------------------------------------------------------------------
    def finish(self, reason: ExitReason) -> None:
        if self._finish_reason is None:
            self._finish_reason = reason
        self.stop()

    def set_state(self, state: ChildState, *, pid: int | None = None, detail: str | None = None) -> None:
        self._tell_supervisor(
            ChildStateChanged(child_id=self.child_id, generation=self.generation, state=state, pid=pid, detail=detail)
        )

    def update_info(self, extra: Mapping[str, Any]) -> None:
        self._tell_supervisor(ChildInfoUpdated(child_id=self.child_id, generation=self.generation, extra=extra))

    def schedule(self, delay_s: float, message: object) -> Any:
        return self.ctx.ticker.schedule(delay_s, self.actor_ref, message)

    @property
    def finishing(self) -> bool:
        return self._finish_reason is not None

    # ---- pykka hooks: final ----------------------------------------------------------------
    def on_start(self) -> None:
        try:
            self.start_child()
        except BaseException as exc:  # noqa: BLE001 - a SystemExit here must not reach pykka's stop_all
            self.log.opt(exception=exc).error("start failed: {!r}", exc)
            self._finish_reason = StartFailed(error=repr(exc))
            self.stop()

    def on_receive(self, message: object) -> object:
        if isinstance(message, StopRequested):
            if self._finish_reason is None:
                self.request_stop(message)
            return None
        if self._finish_reason is not None:
            self._hand_back(message)
            return None
        try:
            return self.handle(message)
        except BaseException as exc:  # noqa: BLE001 - turn any handler failure into one Crashed report
            self.log.opt(exception=exc).error("crashed handling {}: {!r}", type(message).__name__, exc)
            self._finish_reason = Crashed(error=repr(exc))
            self.stop()
            return None

    def on_stop(self) -> None:
        self._run_cleanup()
        self._drain_inbox()
        self._report_exit(self._finish_reason or NormalExit())

    def _hand_back(self, message: object) -> None:
        """Work that needs an answer must not vanish with this incarnation (the agent would wait for ever)."""
        if isinstance(message, REDELIVERABLE):
            self.log.debug("ending; {} handed back to the supervisor", type(message).__name__)
            self._tell_supervisor(Undelivered(child_id=self.child_id, generation=self.generation, message=message))
        else:
            self.log.debug("ending; ignored {}", type(message).__name__)

    def _drain_inbox(self) -> None:
        """pykka drops plain tells still queued behind the stop; hand them back instead (asks get ActorDeadError)."""
        # Only this thread takes from the inbox, so get() after a non-empty check never blocks.
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if envelope.reply_to is not None:
                dead = pykka.ActorDeadError(f"{self.child_id} stopped before handling the message")
                envelope.reply_to.set_exception(exc_info=(pykka.ActorDeadError, dead, None))
            else:
                self._hand_back(envelope.message)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._run_cleanup()
        self._report_exit(Crashed(error=repr(exception_value)))

    def _run_cleanup(self) -> None:
        if self._cleaned_up:
            return
        self._cleaned_up = True
        try:
            self.cleanup()
        except BaseException as exc:  # noqa: BLE001 - cleanup must not stop the report
            self.log.opt(exception=exc).error("cleanup failed: {!r}", exc)

    def _report_exit(self, reason: ExitReason) -> None:
        if self._exit_reported:
            return
        self._exit_reported = True
        self._tell_supervisor(ChildExited(child_id=self.child_id, generation=self.generation, reason=reason))

    def _tell_supervisor(self, message: object) -> None:
        try:
            self.ctx.supervisor.tell(message)
        except pykka.ActorDeadError:
            self.log.debug("supervisor gone; dropped {}", type(message).__name__)
