"""AgentLink: the router's I/O thread, the only owner of the agent's two sockets.

It binds PULL and PUSH, then waits on five things at once (never on a timeout while idle): a request on PULL, a
wake-up from the RouterLink when something was put for the agent, room on PUSH while its own outbox is not empty, and
peers coming and going on either socket (the only trace of a frame over the size limit, docs/protocol.md §2.7).
A request is decoded and routed at once (`route`, one hop to the child that handles it); `status` is answered right
here from the pushed tree snapshot, with no hop at all (docs/architecture.md §5.5).

    bind ──▶ serving ──(stop requested: wake)──▶ final flush ──▶ sockets closed
                │  └─ an exception ──▶ `failed(error)` told to the router actor, sockets closed
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka
import zmq
from loguru import logger

from kernel_runner.excerpts import excerpt
from kernel_runner.messages import AgentRequest, BadFrame, StatusRequest
from kernel_runner.observability.debug_lines import debug
from kernel_runner.procs.wakeup import WakeupPipe
from kernel_runner.wire import frames as wire
from kernel_runner.wire.outbox import RouterLink
from kernel_runner.wire.sockets import bind_socket, recv_monitor_event
from kernel_runner.wire.status import StartupGate

if TYPE_CHECKING:
    from kernel_runner.observability.metrics import RunnerMetrics  # imported only with --metrics-port (architecture §2.1)

Frames = list[bytes]
# Where a decoded request goes; raises pykka.ActorDeadError once the tree is gone (the thread then ends).
Route = Callable[[AgentRequest], None]
StatusFrames = Callable[[], Frames]
CLOSE_LINGER_MS = 200
# ZeroMQ's queue counts messages, not bytes: with records of up to 1 MiB its default of 1000 would hold 1 GiB for an
# agent that stopped reading. This cap plus the output credits bound it in bytes (docs/architecture.md §5.6).
PUSH_HWM = 32
MAX_SENDS_PER_WAKE = 256  # then look at PULL again, so a flood of output never starves requests
# A peer that ZeroMQ dropped for a frame over the limit connects again by itself after its reconnect interval (100 to
# 200 ms by default); a client that went away does not, and takes its output connection with it.
REDIAL_WINDOW_S = 2.0


class PeerWatch:
    """Tells a frame over the limit from a routine disconnect, which ZeroMQ reports alike (a disconnect, nothing more).

    Over the limit, ZeroMQ drops only the input connection of the peer that sent it: that peer's output connection
    stays, and its socket dials the input again at once. A client or agent that goes away closes both, in either
    order. So the hint is given when an input peer comes back within REDIAL_WINDOW_S of a drop and no output peer
    left within that window around it.
    """

    def __init__(self) -> None:
        self._input_dropped_at: float | None = None
        self._output_dropped_at: float | None = None

    def input_dropped(self, now: float) -> None:
        self._input_dropped_at = now

    def output_dropped(self, now: float) -> None:
        self._output_dropped_at = now

    def input_connected(self, now: float) -> float | None:
        """How long after a drop the input peer came back, when that drop looks like the frame limit; else None."""
        dropped_at, self._input_dropped_at = self._input_dropped_at, None
        if dropped_at is None or now - dropped_at > REDIAL_WINDOW_S:
            return None
        output_at = self._output_dropped_at
        if output_at is not None and output_at >= dropped_at - REDIAL_WINDOW_S:
            return None  # its output went too: a peer that left
        return now - dropped_at


class AgentLink(threading.Thread):
    """Receives, routes and answers; sends everything the RouterLink collects, in order, without ever blocking."""

    def __init__(
        self,
        *,
        context: zmq.Context[Any],
        bind: str,
        ports: tuple[int, int],
        link: RouterLink,
        route: Route,
        status_frames: StatusFrames,
        gate: StartupGate,
        outbox_limit: int,
        on_failure: Callable[[str], object],
        metrics: RunnerMetrics | None = None,
    ) -> None:
        super().__init__(name="AgentLink", daemon=True)
        self._context = context
        self._bind = bind
        self._ports = ports
        self._link = link
        self._route = route
        self._status_frames = status_frames
        self._gate = gate
        self._outbox_limit = outbox_limit
        self._on_failure = on_failure
        self._metrics = metrics
        self.bound: concurrent.futures.Future[tuple[int, int]] = concurrent.futures.Future()
        self._stopping = threading.Event()
        self._wakeup = WakeupPipe()
        # Frames to send, in order, each with the output credits it holds until it has left for the socket.
        self._outbox: collections.deque[tuple[Frames, int]] = collections.deque()
        self._held_status = 0
        self._startup_finished = False
        self._outbox_warned = False
        self._peers = PeerWatch()
        self.log = logger.bind(child="router")

    # ---- other threads --------------------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wakeup.wake()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        self.wake()
        self.join(timeout=timeout)

    # ---- the thread -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        pull: zmq.Socket[bytes] = self._context.socket(zmq.PULL)
        push: zmq.Socket[bytes] = self._context.socket(zmq.PUSH)
        monitors: list[zmq.Socket[bytes]] = []
        try:
            pull.setsockopt(zmq.LINGER, 0)
            # A bigger frame is never read into memory: ZeroMQ drops the peer instead (docs/protocol.md §2.7), and
            # the monitors let the log say so (PeerWatch).
            pull.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)
            monitors.append(pull.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED))
            monitors.append(push.get_monitor_socket(zmq.EVENT_DISCONNECTED))
            push.setsockopt(zmq.SNDHWM, PUSH_HWM)
            try:
                ports = bind_socket(pull, self._bind, self._ports[0]), bind_socket(push, self._bind, self._ports[1])
            except zmq.ZMQError as exc:
                self.bound.set_exception(exc)
                return
            self.bound.set_result(ports)
            self._link.consume(self.wake)
            self._serve(pull, push, *monitors)
            self._collect()
            while self._flush(push):  # the last answers of a shutdown still go out, as far as the agent takes them
                pass
            if self._outbox:
                self.log.warning("{} message(s) undelivered at close (no agent reading)", len(self._outbox))
        except Exception as exc:  # noqa: BLE001 - a bug here must reach the supervisor, not vanish with the thread
            self.log.opt(exception=exc).error("agent link failed: {!r}", exc)
            self._on_failure(repr(exc))
        finally:
            self._link.consume(None)
            for _, units in self._outbox:
                if units:
                    self._link.return_credit(units)
            self._outbox.clear()
            for sock, monitor in zip((pull, push), monitors, strict=False):
                sock.disable_monitor()
                monitor.close(linger=0)
            pull.close(linger=0)
            push.close(linger=CLOSE_LINGER_MS)
            self._wakeup.close()

    def _serve(self, pull: zmq.Socket[bytes], push: zmq.Socket[bytes], pull_monitor: zmq.Socket[bytes],
               push_monitor: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(self._wakeup.fd, zmq.POLLIN)
        poller.register(pull_monitor, zmq.POLLIN)
        poller.register(push_monitor, zmq.POLLIN)
        waiting_for_room = False
        while not self._stopping.is_set():
            if bool(self._outbox) != waiting_for_room:
                waiting_for_room = bool(self._outbox)
                poller.modify(push, zmq.POLLOUT if waiting_for_room else 0)
            events = dict(poller.poll())
            if self._wakeup.fd in events:
                self._wakeup.drain()
                self._collect()
            if pull in events:
                self._receive(pull)
            if push_monitor in events:  # first: an output peer's leaving must be known when an input peer comes
                self._output_peer_event(push_monitor)
            if pull_monitor in events:
                self._input_peer_event(pull_monitor)
            if self._flush(push):
                self.wake()  # more to send: come back after a look at PULL

    def _collect(self) -> None:
        metrics = self._metrics
        for message, units in self._link.take():
            frames = wire.encode(message)
            if metrics is not None:
                metrics.message_encoded(message, frames)
            self._outbox.append((frames, units))
        if self._startup_finished and self._held_status:
            self.log.info("ready; answering {} held status request(s)", self._held_status)
            for _ in range(self._held_status):
                self._outbox.append((self._status_frames(), 0))
            self._held_status = 0
        if len(self._outbox) > self._outbox_limit and not self._outbox_warned:
            self._outbox_warned = True
            self.log.warning("agent is not reading: {} messages waiting", len(self._outbox))

    def _receive(self, pull: zmq.Socket[bytes]) -> None:
        try:
            frames = pull.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            self._handle_request(frames)
        except Exception as exc:  # noqa: BLE001 - one bad frame must never cost the agent its socket
            op = excerpt(frames[0], wire.MAX_OP_BYTES) if frames else "none"
            self.log.opt(exception=exc).error("could not handle a frame (op {}, {} frame(s)): {}", op, len(frames),
                                              excerpt(repr(exc), quote=False))

    def _output_peer_event(self, monitor: zmq.Socket[bytes]) -> None:
        try:
            event = recv_monitor_event(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        self._peers.output_dropped(time.monotonic())
        debug(self.log, "a peer of the output socket {} disconnected", event.endpoint.decode(errors="replace"))

    def _input_peer_event(self, monitor: zmq.Socket[bytes]) -> None:
        try:
            event = recv_monitor_event(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        endpoint = event.endpoint.decode(errors="replace")
        now = time.monotonic()
        if event.event == zmq.EVENT_DISCONNECTED:
            # An agent or a client that goes away is routine: no warning, and no guess about frames.
            self._peers.input_dropped(now)
            debug(self.log, "a peer of the input socket {} disconnected", endpoint)
            return
        after_s = self._peers.input_connected(now)
        if after_s is not None:
            self.log.warning("a peer of the input socket was dropped and dialled {} again {:.2f}s later while its "
                             "output connection stayed: ZeroMQ drops a peer that sends a frame over {}, with whatever "
                             "else it had in flight (docs/protocol.md §2.7)", endpoint, after_s,
                             wire.size_text(wire.MAX_FRAME_BYTES))

    def _handle_request(self, frames: list[bytes]) -> None:
        request = wire.decode(frames)
        if self._metrics is not None:
            self._metrics.request_received(frames, request)
        match request:
            case StatusRequest():
                self._answer_status()
            case BadFrame():
                # The op is at most MAX_OP_BYTES and the reason quotes the wire only through excerpt().
                self.log.warning("dropped bad frame (op={}, frames={}): {}", request.op, request.frame_count,
                                 request.reason)
                if request.reply is not None:
                    self._outbox.append((wire.encode(request.reply), 0))
            case _:
                try:
                    self._route(request)
                except pykka.ActorDeadError:
                    self.log.warning("no child to take {}; dropped", type(request).__name__)

    def _answer_status(self) -> None:
        if self._gate.is_open:
            self._outbox.append((self._status_frames(), 0))
            return
        # The agent reads the first status reply as "bootstrap has finished" (docs/protocol.md §1.6).
        self._held_status += 1
        if self._held_status == 1:
            self._gate.when_open(self._startup_done)

    def _startup_done(self) -> None:
        """Runs in whichever thread opened the gate."""
        self._startup_finished = True
        self.wake()

    def _flush(self, push: zmq.Socket[bytes]) -> bool:
        """Send what PUSH takes now; True when more is left that PUSH would take (a batch was sent)."""
        for _ in range(MAX_SENDS_PER_WAKE):
            if not self._outbox:
                self._outbox_warned = False
                return False
            frames, units = self._outbox[0]
            try:
                push.send_multipart(frames, zmq.NOBLOCK, copy=len(frames[-1]) < 65536)
            except zmq.Again:
                return False  # no agent, or it is not reading: POLLOUT wakes us when there is room
            self._outbox.popleft()
            if units:
                self._link.return_credit(units)
        return True


__all__ = ["AgentLink"]
