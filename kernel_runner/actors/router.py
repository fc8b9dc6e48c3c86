"""RouterActor: owns the agent-facing PUSH socket; the only code that writes frames to the agent."""

from __future__ import annotations

import collections
import sys
import threading
from typing import Any

import zmq

from kernel_runner import wire
from kernel_runner.actors.agent_link import AgentReceiver, bind_socket
from kernel_runner.actors.base import ChildContext, SupervisedActor
from kernel_runner.ids import LANG_CHILD, next_run_id
from kernel_runner.messages import (
    AppsResult,
    BadFrame,
    ChildState,
    CompleteCode,
    CompletionResult,
    FeedInput,
    Finished,
    FlushOutbox,
    ForwardToChild,
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
    StatusReply,
    StatusRequest,
    WaitingInput,
)

OUTGOING = (Output, Media, Html, Finished, WaitingInput, ServiceResult, ModelServiceResult, ModelServiceStatus,
            AppsResult, CompletionResult, StatusReply, LogRecord)
TO_SUPERVISOR = (StatusRequest, StartService, StartModelService, ShutdownService, GetApps)
TO_LANG_RUNNER = (FeedInput, InterruptRun, CompleteCode)
FLUSH_DELAYS_S = (0.002, 0.005, 0.01, 0.02, 0.05)
CLOSE_LINGER_MS = 200


class BoundPorts:
    """The ports the sockets really bound (port 0 picks one); kept across Router restarts so the agent reconnects."""

    def __init__(self, port_in: int, port_out: int) -> None:
        self.port_in = port_in
        self.port_out = port_out
        self.bound = threading.Event()
        self.error: str | None = None

    def report(self, error: str | None) -> None:
        self.error = error
        self.bound.set()


class RouterActor(SupervisedActor):
    """Routes decoded agent requests into the tree and sends every reply, never blocking on the socket."""

    def __init__(self, *, ctx: ChildContext, ports: BoundPorts, zmq_context: zmq.Context[Any] | None = None) -> None:
        super().__init__(ctx=ctx)
        self._ports = ports
        self._zmq = zmq_context or zmq.Context.instance()
        self._push: zmq.Socket[bytes] | None = None
        self._receiver: AgentReceiver | None = None
        self._outbox: collections.deque[tuple[list[bytes], bool]] = collections.deque()
        self._flush_scheduled = False
        self._flush_attempt = 0
        self._outbox_warned = False
        self.sent_count = 0

    # ---- life ------------------------------------------------------------------------------------
    def start_child(self) -> None:
        try:
            self._bind_sockets()
        except Exception as exc:
            self._ports.report(f"cannot bind the agent sockets: {exc}")
            raise
        self._ports.report(None)
        self.set_state(ChildState.RUNNING)

    def _bind_sockets(self) -> None:
        bind = self.ctx.config.bind
        push: zmq.Socket[bytes] = self._zmq.socket(zmq.PUSH)
        self._push = push
        self._ports.port_out = bind_socket(push, bind, self._ports.port_out)
        receiver = AgentReceiver(context=self._zmq, bind=bind, port=self._ports.port_in, router=self.actor_ref)
        self._receiver = receiver
        receiver.start()
        self._ports.port_in = receiver.bound.result(timeout=5.0)
        # Upstream prints these two lines to stdout (spec §9.2); ops scripts grep for them.
        print(f"binding to tcp://{bind}:{self._ports.port_in}", flush=True)
        print(f"binding to tcp://{bind}:{self._ports.port_out}", flush=True)
        sys.stdout.flush()
        self.log.info("listening: PULL :{} PUSH :{}", self._ports.port_in, self._ports.port_out)

    def cleanup(self) -> None:
        if self._receiver is not None:
            self._receiver.stopping.set()
            self._receiver.join(timeout=1.0)
        if self._push is not None:
            self._flush(final=True)
            if self._outbox:
                self.log.warning("{} message(s) undelivered at close (no agent reading)", len(self._outbox))
            for _, credited in self._outbox:
                if credited:
                    self.ctx.router.return_credit()
            self._outbox.clear()
            self._push.close(linger=CLOSE_LINGER_MS)
            self._push = None

    # ---- dispatch ----------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        match message:
            case RunBatch() | RunCode():
                return self._handle_run(message)
            case BadFrame():
                return self._handle_bad_frame(message)
            case FlushOutbox():
                return self._handle_flush_outbox()
            case _ if isinstance(message, OUTGOING):
                return self._send(message)
            case _ if isinstance(message, TO_SUPERVISOR):
                return self.ctx.supervisor.tell(message)
            case _ if isinstance(message, TO_LANG_RUNNER):
                return self.ctx.supervisor.tell(ForwardToChild(child_id=LANG_CHILD, message=message))
            case _:
                return super().handle(message)

    def _handle_run(self, message: RunBatch | RunCode) -> None:
        task = (
            RunTask(run_id=next_run_id(), kind=message.kind, text=message.command)
            if isinstance(message, RunBatch)
            else RunTask(run_id=next_run_id(), kind="code", text=message.source)
        )
        self.log.debug("run {} {} ({} bytes)", task.run_id, task.kind, len(task.text))
        self.ctx.supervisor.tell(ForwardToChild(child_id=LANG_CHILD, message=task))

    def _handle_bad_frame(self, message: BadFrame) -> None:
        self.log.warning("dropped bad frame (op={}, frames={}): {}", message.op, message.frame_count, message.reason)
        if message.reply is not None:
            self._send(message.reply)

    # ---- sending -------------------------------------------------------------------------------------
    def _send(self, message: Any) -> None:
        frames = wire.encode(message)
        credited = isinstance(message, Output) and message.credited
        if self._outbox or not self._try_send(frames):
            self._outbox.append((frames, credited))
            if len(self._outbox) > self.ctx.config.outbox_limit and not self._outbox_warned:
                self._outbox_warned = True
                self.log.warning("agent is not reading: {} messages waiting", len(self._outbox))
            self._schedule_flush()
            return
        if credited:
            self.ctx.router.return_credit()

    def _try_send(self, frames: list[bytes]) -> bool:
        assert self._push is not None
        try:
            self._push.send_multipart(frames, zmq.NOBLOCK, copy=len(frames[1]) < 65536)
        except zmq.Again:
            return False
        self.sent_count += 1
        return True

    def _flush(self, *, final: bool = False) -> None:
        while self._outbox:
            frames, credited = self._outbox[0]
            if not self._try_send(frames):
                return
            self._outbox.popleft()
            self._flush_attempt = 0
            if credited:
                self.ctx.router.return_credit()
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
