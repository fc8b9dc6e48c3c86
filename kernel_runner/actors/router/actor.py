"""RouterActor: the supervised owner of the agent's sockets, which its I/O thread (AgentLink) drives.

Requests never wait in an actor's inbox: AgentLink routes each decoded request straight to the child that handles it
(`route_request`, through the child directory) and answers `status` itself from the tree snapshot the supervisor
pushes. Everything for the agent is put into the RouterLink, which AgentLink drains in order
(docs/architecture.md §5). The actor itself only starts the thread, reports its life to the supervisor, and ends
(so it is restarted on the same ports) when the thread fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import zmq

from kernel_runner.actors.router.agent_link import AgentLink
from kernel_runner.context import RunnerContext
from kernel_runner.ids import LANG_CHILD, SERVICES_CHILD, next_run_id
from kernel_runner.messages import (
    AgentEvent,
    AgentRequest,
    CompleteCode,
    FeedInput,
    GetApps,
    InterruptRun,
    RunBatch,
    RunCode,
    RunTask,
    ShutdownService,
    StartModelService,
    StartService,
)
from kernel_runner.supervision.actor import SupervisedActor
from kernel_runner.supervision.directory import ChildDirectory
from kernel_runner.supervision.exits import Crashed
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.spec import ChildContext, ChildState
from kernel_runner.wire import frames as wire
from kernel_runner.wire.answers import (
    AppsAnswer,
    CompletionAnswer,
    Deliver,
    ModelStartAnswer,
    RunAnswer,
    ServiceStartAnswer,
)
from kernel_runner.wire.status import StatusBoard

if TYPE_CHECKING:
    from kernel_runner.observability.metrics import RunnerMetrics

BIND_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 2.0


class BoundPorts:
    """The ports the sockets really bound (port 0 picks one); kept across router restarts so the agent reconnects."""

    def __init__(self, port_in: int, port_out: int) -> None:
        self.port_in = port_in
        self.port_out = port_out
        self.bound = threading.Event()
        self.error: str | None = None

    def report(self, error: str | None) -> None:
        self.error = error
        self.bound.set()

    def __repr__(self) -> str:
        failed = f", error={self.error!r}" if self.error is not None else ""
        return f"BoundPorts(port_in={self.port_in}, port_out={self.port_out}{failed})"


def route_request(request: AgentRequest, *, directory: ChildDirectory, deliver: Deliver,
                  on_event: Callable[[AgentEvent], None]) -> None:
    """Runs in AgentLink's thread: every op goes straight to the child that handles it (one hop); an `event` to the
    process watch, which reports in its own thread (docs/protocol.md §9.4). A request with a reply gets its answer
    here (wire/answers.py), which `deliver` puts into the RouterLink."""
    match request:
        case RunBatch():
            directory.tell(LANG_CHILD, RunTask(run_id=next_run_id(), kind=request.kind, text=request.command,
                                               answer=RunAnswer(deliver, request.kind)))
        case RunCode():
            directory.tell(LANG_CHILD, RunTask(run_id=next_run_id(), kind="code", text=request.source,
                                               answer=RunAnswer(deliver, "code")))
        case CompleteCode():
            directory.tell(LANG_CHILD, CompleteCode(code=request.code, options=request.options,
                                                     answer=CompletionAnswer(deliver)))
        case FeedInput() | InterruptRun():
            directory.tell(LANG_CHILD, request)
        case StartService():
            directory.tell(SERVICES_CHILD, StartService(info=request.info, answer=ServiceStartAnswer(deliver)))
        case StartModelService():
            directory.tell(SERVICES_CHILD, StartModelService(model=request.model, answer=ModelStartAnswer(deliver)))
        case GetApps():
            directory.tell(SERVICES_CHILD, GetApps(name=request.name, answer=AppsAnswer(deliver)))
        case ShutdownService():
            directory.tell(SERVICES_CHILD, request)
        case AgentEvent():
            on_event(request)


@attrs.frozen(kw_only=True)
class _LinkFailed:
    error: str


class RouterActor(SupervisedActor):
    """Owns AgentLink from start to stop; a failed link ends this incarnation so the supervisor restarts it."""

    def __init__(
        self,
        *,
        ctx: ChildContext,
        runner: RunnerContext,
        ports: BoundPorts,
        board: StatusBoard,
        started_at: float,
        on_event: Callable[[AgentEvent], None],
        zmq_context: zmq.Context[Any] | None = None,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self._ports = ports
        self._board = board
        self._started_at = started_at
        self._zmq = zmq_context or zmq.Context.instance()
        self._agent_link: AgentLink | None = None
        self._metrics = metrics
        self._on_event = on_event

    def start_child(self) -> None:
        config = self._runner.config
        directory, clock, gate, board = self.ctx.directory, self.ctx.clock, self._runner.gate, self._board
        encoder, started_at, me, on_event = wire.StatusEncoder(), self._started_at, self.actor_ref, self._on_event
        generations = self._runner.generations
        deliver = self._runner.router.tell

        def status_frames() -> list[bytes]:
            return encoder.encode(started_at=started_at, ready=gate.is_open, children=board.snapshot.children,
                                  now=clock.monotonic(), generation=generations.choice)

        link = AgentLink(
            context=self._zmq,
            bind=config.bind,
            ports=(self._ports.port_in, self._ports.port_out),
            link=self._runner.router,
            route=lambda request: route_request(request, directory=directory, deliver=deliver, on_event=on_event),
            status_frames=status_frames,
            gate=gate,
            outbox_limit=config.outbox_limit,
            on_failure=lambda error: tell_if_alive(me, _LinkFailed(error=error)),
            metrics=self._metrics,
        )
        self._agent_link = link
        link.start()
        try:
            self._ports.port_in, self._ports.port_out = link.bound.result(timeout=BIND_TIMEOUT_S)
        except Exception as exc:
            self._ports.report(f"cannot bind the agent sockets: {exc}")
            raise
        self._ports.report(None)  # the command prints upstream's `binding to` lines (cli.py); a library never does
        self.log.info("listening: PULL :{} PUSH :{}", self._ports.port_in, self._ports.port_out)
        self.set_state(ChildState.RUNNING)

    def cleanup(self) -> None:
        if self._agent_link is not None:
            self._agent_link.stop(timeout=STOP_TIMEOUT_S)
            self._agent_link = None

    def handle(self, message: object) -> object:
        match message:
            case _LinkFailed():
                return self.finish(Crashed(error=f"agent link failed: {message.error}"))
            case _:
                return super().handle(message)


__all__ = ["BoundPorts", "RouterActor", "route_request"]
