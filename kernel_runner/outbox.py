"""The way to the agent for everything that is not the router: the current router ref plus output credits.

A producer thread (a pipe pump, the kernel's channel thread, a pty reader) takes a credit before it tells a chunk,
and whoever sends the chunk on gives the credit back. So a producer can never be more than `count` chunks ahead of
the consumer: that is the backpressure agent → router outbox → pump → OS pipe → child (docs/architecture.md §5).
"""

from __future__ import annotations

import threading
from typing import Any

import pykka
from loguru import logger

from kernel_runner.messages import Output, StreamName, ToAgent
from kernel_runner.refs import tell_if_alive

CREDIT_WAIT_S = 0.1


class Credits:
    """A bounded number of messages a producer thread may have in flight at once."""

    def __init__(self, count: int) -> None:
        self._sem = threading.BoundedSemaphore(count)

    def take(self, stopping: threading.Event) -> bool:
        """Blocks (a producer thread, never an actor) until a credit is free; False once `stopping` is set."""
        while not self._sem.acquire(timeout=CREDIT_WAIT_S):
            if stopping.is_set():
                return False
        if stopping.is_set():
            self.give()
            return False
        return True

    def give(self) -> None:
        try:
            self._sem.release()
        except ValueError:
            pass  # a credit given back twice (a message sent after a restart reset the count): harmless


class RouterLink:
    """The current router ref (it changes when the router restarts) and the output credits producers take."""

    def __init__(self, credits: int) -> None:
        self._ref: pykka.ActorRef[Any] | None = None
        self.credits = Credits(credits)
        # Set when the runner stops: producers waiting for a credit give up instead of waiting for ever.
        self.closed = threading.Event()

    def attach(self, ref: pykka.ActorRef[Any]) -> None:
        self._ref = ref

    def tell(self, message: ToAgent | object) -> None:
        if not tell_if_alive(self._ref, message):
            logger.bind(child="router-link").warning("no router to take {}; dropped", type(message).__name__)

    def send_output(self, stream: StreamName, data: bytes) -> None:
        """Blocks in the producer's thread until the router has room; gives up once the runner stops."""
        if self.credits.take(self.closed):
            self.tell(Output(stream=stream, data=data, credited=True))

    def return_credit(self) -> None:
        self.credits.give()


__all__ = ["Credits", "RouterLink"]
