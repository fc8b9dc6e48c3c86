"""The way to the agent for everything that is not the router: an ordered queue the router's I/O thread drains.

Whoever has something for the agent (an actor's reply, a pipe pump's chunk, the kernel's channel thread) puts it
into the RouterLink; the router's AgentLink thread, the only owner of the agent's sockets, takes everything in order
and sends it. The queue outlives router restarts, so nothing put in while the router restarts is lost.

Output chunks are credited: a producer takes a credit before it puts a chunk, and the router gives it back once the
chunk has left the process. So a producer is never more than `count` chunks ahead of the agent: that is the
backpressure agent → router → pump → OS pipe → child (docs/architecture.md §5.6).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import pykka

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
            pass  # given back twice (a chunk dropped at a restart): harmless


class RouterLink:
    """An ordered, thread-safe queue of messages for the agent, and the output credits producers take."""

    def __init__(self, credits: int) -> None:
        self.credits = Credits(credits)
        # Set when the runner stops: producers waiting for a credit give up instead of waiting for ever.
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._pending: collections.deque[ToAgent] = collections.deque()
        self._waker: Callable[[], None] | None = None
        self._wake_due = True
        self._drain_lock = threading.Lock()

    # ---- producers --------------------------------------------------------------------------------------------------
    def tell(self, message: ToAgent) -> None:
        with self._lock:
            self._pending.append(message)
            waker, self._wake_due = (self._waker if self._wake_due else None), False
        if waker is not None:
            waker()

    def send_output(self, stream: StreamName, data: bytes) -> None:
        """Blocks in the producer's thread until the router has room; gives up once the runner stops."""
        if self.credits.take(self.closed):
            self.tell(Output(stream=stream, data=data, credited=True))

    # ---- the consumer (the router's I/O thread) -------------------------------------------------------------------
    def consume(self, waker: Callable[[], None] | None) -> None:
        """Become the consumer: `waker` is called (in a producer's thread) when messages arrive after a `take`."""
        with self._lock:
            self._waker, self._wake_due = waker, False
        if waker is not None:
            waker()  # whatever arrived while nobody consumed

    def take(self) -> list[ToAgent]:
        """Everything pending, in order; the next message put calls the waker again."""
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._wake_due = True
        return items

    def return_credit(self) -> None:
        self.credits.give()

    def forward_to(self, ref: pykka.ActorRef[Any]) -> None:
        """Tests and embedders: deliver every message to an actor instead of an agent (credits given back at once)."""

        def drain() -> None:
            with self._drain_lock:  # producers drain concurrently; one at a time keeps the order
                for message in self.take():
                    tell_if_alive(ref, message)
                    if isinstance(message, Output) and message.credited:
                        self.return_credit()

        self.consume(drain)


__all__ = ["Credits", "RouterLink"]
