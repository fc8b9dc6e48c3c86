"""RouterActor: owns the agent-facing PUSH socket, the only code that writes frames to the agent.

Requests never wait in the router's inbox: its reader thread (AgentReceiver) routes each decoded request straight
to the child that handles it, through the child directory (`route_request`). The router itself only sends: replies,
output, and `status`, which it answers from the tree snapshot the supervisor pushes (docs/architecture.md §5).
"""

from __future__ import annotations

import collections
import sys
import threading
from typing import Any

import attrs
import pykka
import zmq

from kernel_runner import wire
from kernel_runner.actors.agent_link import AgentReceiver
from kernel_runner.actors.base import SupervisedActor
from kernel_runner.context import RunnerContext
from kernel_runner.directory import ChildDirectory
from kernel_runner.ids import LANG_CHILD, SERVICES_CHILD, next_run_id
from kernel_runner.messages import (
    AgentRequest,
    AppsResult,
    BadFrame,
    CompleteCode,
    CompletionResult,
    FeedInput,
    Finished,
    FlushOutbox,
    GetApps,
    Html,
    InterruptRun,
    LogRecord,
    Media,
    ModelServiceResult,
    ModelServiceStatus,
    Output,
    RunBatch,
    RunCode,
    RunTask,
    ServiceResult,
    ShutdownService,
    StartModelService,
    StartService,
    StatusRequest,
    WaitingInput,
)
from kernel_runner.refs import tell_if_alive
from kernel_runner.sockets import bind_socket
from kernel_runner.status import StatusBoard
from kernel_runner.supervision import ChildContext, ChildState

OUTGOING = (Output, Media, Html, Finished, WaitingInput, ServiceResult, ModelServiceResult, ModelServiceStatus,
            AppsResult, CompletionResult, LogRecord)
FLUSH_DELAYS_S = (0.002, 0.005, 0.01, 0.02, 0.05)
CLOSE_LINGER_MS = 200
BIND_TIMEOUT_S = 5.0


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


def route_request(request: AgentRequest | BadFrame, *, directory: ChildDirectory, router: pykka.ActorRef[Any]) -> None:
    """Runs in the reader thread: every op goes straight to the child that handles it (one hop)."""
    match request:
        case RunBatch():
            directory.tell(LANG_CHILD, RunTask(run_id=next_run_id(), kind=request.kind, text=request.command))
        case RunCode():
            directory.tell(LANG_CHILD, RunTask(run_id=next_run_id(), kind="code", text=request.source))
        case FeedInput() | InterruptRun() | CompleteCode():
            directory.tell(LANG_CHILD, request)
        case StartService() | ShutdownService() | GetApps() | StartModelService():
            directory.tell(SERVICES_CHILD, request)
        case _:
            router.tell(request)  # status and bad frames: the router answers them itself


@attrs.frozen(kw_only=True)
class _StartupFinished:
    """The start-up gate opened: answer the status requests held until now."""


class RouterActor(SupervisedActor):
    """Sends every reply without ever blocking on the socket; answers `status` from the pushed snapshot."""

    def __init__(
        self,
        *,
        ctx: ChildContext,
        runner: RunnerContext,
        ports: BoundPorts,
        board: StatusBoard,
        started_at: float,
        zmq_context: zmq.Context[Any] | None = None,
    ) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self._link = runner.router
        self._ports = ports
        self._board = board
        self._started_at = started_at
        self._status = wire.StatusEncoder()
        self._held_status_requests = 0
        self._zmq = zmq_context or zmq.Context.instance()
        self._push: zmq.Socket[bytes] | None = None
        self._receiver: AgentReceiver | None = None
        self._outbox: collections.deque[tuple[list[bytes], bool]] = collections.deque()
        self._flush_scheduled = False
        self._flush_attempt = 0
        self._outbox_warned = False

    # ---- life ---------------------------------------------------------------------------------------------------------
    def start_child(self) -> None:
        try:
            self._bind_sockets()
        except Exception as exc:
            self._ports.report(f"cannot bind the agent sockets: {exc}")
            raise
        self._ports.report(None)
        self.set_state(ChildState.RUNNING)

    def _bind_sockets(self) -> None:
        bind = self._runner.config.bind
        push: zmq.Socket[bytes] = self._zmq.socket(zmq.PUSH)
        self._push = push
        self._ports.port_out = bind_socket(push, bind, self._ports.port_out)
        directory, me = self.ctx.directory, self.actor_ref

        def route(request: AgentRequest | BadFrame) -> None:
            route_request(request, directory=directory, router=me)

        receiver = AgentReceiver(context=self._zmq, bind=bind, port=self._ports.port_in, route=route)
        self._receiver = receiver
        receiver.start()
        self._ports.port_in = receiver.bound.result(timeout=BIND_TIMEOUT_S)
        # Upstream prints these two lines to stdout (docs/protocol.md §9.2); ops scripts grep for them.
        print(f"binding to tcp://{bind}:{self._ports.port_in}", flush=True)
        print(f"binding to tcp://{bind}:{self._ports.port_out}", flush=True)
        sys.stdout.flush()
        self.log.info("listening: PULL :{} PUSH :{}", self._ports.port_in, self._ports.port_out)

    def cleanup(self) -> None:
        if self._receiver is not None:
            self._receiver.stopping.set()
            self._receiver.join(timeout=1.0)
        if self._push is not None:
            self._flush()
            if self._outbox:
                self.log.warning("{} message(s) undelivered at close (no agent reading)", len(self._outbox))
            for _, credited in self._outbox:
                if credited:
                    self._link.return_credit()
            self._outbox.clear()
            self._push.close(linger=CLOSE_LINGER_MS)
            self._push = None

    # ---- dispatch -----------------------------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        match message:
            case _ if isinstance(message, OUTGOING):
                return self._send(wire.encode(message), credited=isinstance(message, Output) and message.credited)
            case StatusRequest():
                return self._handle_status_request()
            case _StartupFinished():
                return self._handle_startup_finished()
            case BadFrame():
                return self._handle_bad_frame(message)
            case FlushOutbox():
                return self._handle_flush_outbox()
            case _:
                return super().handle(message)

    def _handle_status_request(self) -> None:
        gate = self._runner.gate
        if gate.is_open:
            self._send_status()
            return
        # The agent reads the first status reply as "bootstrap has finished" (docs/protocol.md §1.6).
        self._held_status_requests += 1
        if self._held_status_requests == 1:
            me = self.actor_ref
            gate.when_open(lambda: tell_if_alive(me, _StartupFinished()))

    def _handle_startup_finished(self) -> None:
        held, self._held_status_requests = self._held_status_requests, 0
        self.log.info("ready; answering {} held status request(s)", held)
        for _ in range(held):
            self._send_status()

    def _send_status(self) -> None:
        frames = self._status.encode(
            started_at=self._started_at,
            ready=self._runner.gate.is_open,
            children=self._board.snapshot.children,
            now=self.ctx.clock.monotonic(),
        )
        self._send(frames, credited=False)

    def _handle_bad_frame(self, message: BadFrame) -> None:
        self.log.warning("dropped bad frame (op={}, frames={}): {}", message.op, message.frame_count, message.reason)
        if message.reply is not None:
            self._send(wire.encode(message.reply), credited=False)

    # ---- sending ------------------------------------------------------------------------------------------------------
    def _send(self, frames: list[bytes], *, credited: bool) -> None:
        if self._outbox or not self._try_send(frames):
            self._outbox.append((frames, credited))
            if len(self._outbox) > self._runner.config.outbox_limit and not self._outbox_warned:
                self._outbox_warned = True
                self.log.warning("agent is not reading: {} messages waiting", len(self._outbox))
            self._schedule_flush()
            return
        if credited:
            self._link.return_credit()

    def _try_send(self, frames: list[bytes]) -> bool:
        assert self._push is not None
        try:
            self._push.send_multipart(frames, zmq.NOBLOCK, copy=len(frames[1]) < 65536)
        except zmq.Again:
            return False
        return True

    def _flush(self) -> None:
        while self._outbox:
            frames, credited = self._outbox[0]
            if not self._try_send(frames):
                return
            self._outbox.popleft()
            self._flush_attempt = 0
            if credited:
                self._link.return_credit()
        self._outbox_warned = False

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        delay = FLUSH_DELAYS_S[min(self._flush_attempt, len(FLUSH_DELAYS_S) - 1)]
        self._flush_attempt += 1
        self.schedule(delay, FlushOutbox())

    def _handle_flush_outbox(self) -> None:
        self._flush_scheduled = False
        self._flush()
        if self._outbox:
            self._schedule_flush()


__all__ = ["BoundPorts", "RouterActor", "route_request"]
