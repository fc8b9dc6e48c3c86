"""The way to the agent for everything that is not the router: an ordered queue the router's I/O thread drains.

Whoever has something for the agent (an actor's reply, a pipe pump's chunk, the kernel's channel thread) puts it
into the RouterLink; the router's AgentLink thread, the only owner of the agent's sockets, takes everything in order
and sends it. The queue outlives router restarts, so nothing put in while the router restarts is lost.

Output chunks are credited: a producer takes credits before it puts a chunk, one per started CREDIT_BYTES of it, and
the router gives them back once the chunk has left for the socket. So producers are never more than `count` chunks
and `count × CREDIT_BYTES` bytes ahead of the agent: that is the backpressure agent → router → pump → OS pipe → child
(docs/architecture.md §5.6).

Output chunks that pile up while the router is busy leave as one record (up to MAX_RECORD_BYTES, docs/protocol.md
§2.5): the agent concatenates a stream's records anyway, and a fast child then costs a few big socket sends instead of
one per pipe read.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from kernel_runner.messages import Output, StreamName, ToAgent
from kernel_runner.supervision.refs import tell_if_alive

CREDIT_WAIT_S = 0.1
# One output credit covers this much of a chunk (docs/architecture.md §5.6): credits bound bytes, not only messages.
CREDIT_BYTES = 256 * 1024
# docs/protocol.md §2.5: no stdout/stderr record is larger (the same limit as jupyter.MAX_RECORD_BYTES).
MAX_RECORD_BYTES = 1 << 20


class Credits:
    """A bounded number of units a producer thread may have in flight at once.

    A take of more units than the whole budget waits until nothing is in flight, then goes alone.
    """

    def __init__(self, count: int) -> None:
        self._total = count
        self._free = count
        self._cond = threading.Condition(threading.Lock())

    def take(self, stopping: threading.Event, units: int = 1) -> bool:
        """Blocks (a producer thread, never an actor) until the units are free; False once `stopping` is set."""
        with self._cond:
            while self._free < min(units, self._total):
                if stopping.is_set():
                    return False
                self._cond.wait(CREDIT_WAIT_S)
            if stopping.is_set():
                return False
            self._free -= units
            return True

    def give(self, units: int = 1) -> None:
        with self._cond:
            # Given back twice (a chunk dropped at a restart) is harmless: never above the budget.
            self._free = min(self._total, self._free + units)
            self._cond.notify_all()


def credits_for(size: int) -> int:
    """One credit per started CREDIT_BYTES, at least one (so many tiny chunks are bounded too)."""
    return max(1, -(-size // CREDIT_BYTES))


# What the consumer takes: a message and the output credits it holds (given back once it has left).
Outgoing = tuple[ToAgent, int]


class RouterLink:
    """An ordered, thread-safe queue of messages for the agent, and the output credits producers take."""

    def __init__(self, credits: int) -> None:
        self.credits = Credits(credits)
        # Set when the runner stops: producers waiting for a credit give up instead of waiting for ever.
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._pending: collections.deque[Outgoing] = collections.deque()
        self._waker: Callable[[], None] | None = None
        self._wake_due = True
        self._drain_lock = threading.Lock()

    def __repr__(self) -> str:
        with self._lock:
            pending = len(self._pending)
        return f"RouterLink(pending={pending}, closed={self.closed.is_set()})"

    # ---- producers --------------------------------------------------------------------------------------------------
    def tell(self, message: ToAgent) -> None:
        self._put(message, 0)

    def send_output(self, stream: StreamName, data: bytes) -> None:
        """Blocks in the producer's thread until the router has room; gives up once the runner stops."""
        units = credits_for(len(data))
        if self.credits.take(self.closed, units):
            self._put(Output(stream=stream, data=data, credited=True), units)

    def _put(self, message: ToAgent, units: int) -> None:
        with self._lock:
            self._pending.append((message, units))
            waker, self._wake_due = (self._waker if self._wake_due else None), False
        if waker is not None:
            waker()

    # ---- the consumer (the router's I/O thread) -------------------------------------------------------------------
    def consume(self, waker: Callable[[], None] | None) -> None:
        """Become the consumer: `waker` is called (in a producer's thread) when messages arrive after a `take`."""
        with self._lock:
            self._waker, self._wake_due = waker, False
        if waker is not None:
            waker()  # whatever arrived while nobody consumed

    def take(self, *, merge: bool = True) -> list[Outgoing]:
        """Everything pending, in order, each with the credits it holds; the next message put calls the waker again.

        `merge`: credited chunks of one stream that follow each other become one record of up to MAX_RECORD_BYTES.
        """
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._wake_due = True
        return merge_outputs(items) if merge and len(items) > 1 else items

    def return_credit(self, units: int = 1) -> None:
        self.credits.give(units)

    def forward_to(self, ref: pykka.ActorRef[Any]) -> None:
        """Tests and embedders: deliver every message to an actor instead of an agent (credits given back at once).

        Chunks are not merged here, so a test sees each chunk as it was put.
        """

        def drain() -> None:
            with self._drain_lock:  # producers drain concurrently; one at a time keeps the order
                for message, units in self.take(merge=False):
                    tell_if_alive(ref, message)
                    if units:
                        self.return_credit(units)

        self.consume(drain)


def merge_outputs(items: Sequence[Outgoing]) -> list[Outgoing]:
    """Join runs of credited chunks of one stream into records of at most MAX_RECORD_BYTES, in order.

    Uncredited outputs (the runner's own notices, one record each, docs/protocol.md §2.5) are never merged.
    """
    merged: list[Outgoing] = []
    run: list[bytes] = []
    run_units = run_size = 0
    run_stream: StreamName | None = None

    def close_run() -> None:
        nonlocal run_units, run_size
        if run and run_stream is not None:
            data = run[0] if len(run) == 1 else b"".join(run)
            merged.append((Output(stream=run_stream, data=data, credited=True), run_units))
        run.clear()
        run_units = run_size = 0

    for message, units in items:
        if not (isinstance(message, Output) and message.credited):
            close_run()
            merged.append((message, units))
            continue
        if message.stream != run_stream or run_size + len(message.data) > MAX_RECORD_BYTES:
            close_run()
            run_stream = message.stream
        run.append(message.data)
        run_units += units
        run_size += len(message.data)
    close_run()
    return merged


__all__ = ["CREDIT_BYTES", "MAX_RECORD_BYTES", "Credits", "Outgoing", "RouterLink", "credits_for", "merge_outputs"]
