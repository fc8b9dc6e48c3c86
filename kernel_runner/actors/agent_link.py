"""AgentReceiver: the router's thread that owns the PULL socket, decodes every frame and routes it at once."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import pykka
import zmq
from loguru import logger

from kernel_runner import wire
from kernel_runner.messages import AgentRequest, BadFrame
from kernel_runner.sockets import bind_socket

POLL_MS = 100

# Where a decoded request goes; raises pykka.ActorDeadError once the router is gone (the thread then ends).
Route = Callable[[AgentRequest | BadFrame], None]


class AgentReceiver(threading.Thread):
    """Creates, binds, polls and closes the PULL socket in its own thread (ZeroMQ sockets are not thread-safe)."""

    def __init__(self, *, context: zmq.Context[Any], bind: str, port: int, route: Route) -> None:
        super().__init__(name="AgentReceiver", daemon=True)
        self._context = context
        self._bind = bind
        self._port = port
        self._route = route
        self.bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self.stopping = threading.Event()
        self.log = logger.bind(child="router")

    def run(self) -> None:
        sock: zmq.Socket[bytes] = self._context.socket(zmq.PULL)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            try:
                port = bind_socket(sock, self._bind, self._port)
            except zmq.ZMQError as exc:
                self.bound.set_exception(exc)
                return
            self.bound.set_result(port)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            while not self.stopping.is_set():
                if not poller.poll(POLL_MS):
                    continue
                while not self.stopping.is_set():
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self._route(wire.decode(frames))
                    except pykka.ActorDeadError:
                        self.log.debug("router stopped; receiver exits")
                        return
        finally:
            sock.close(linger=0)
