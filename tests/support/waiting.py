"""Bounded waits on events and predicates; tests never sleep to synchronise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str = "condition") -> T:
    """Re-check `predicate` (waking every 10 ms) until it is truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        pause.wait(0.01)


class _Book:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.cond = threading.Condition()


class RecorderActor(pykka.ThreadingActor):
    """Records every message it is told; tests wait on a Condition for a matching one."""

    def __init__(self, book: _Book) -> None:
        super().__init__()
        self.book = book

    def on_receive(self, message: Any) -> Any:
        with self.book.cond:
            self.book.messages.append(message)
            self.book.cond.notify_all()
        return None


class Recorder:
    """Test-side view of a RecorderActor: its ref plus wait_for(match, timeout)."""

    def __init__(self) -> None:
        self._actor = _Book()
        self.ref = RecorderActor.start(self._actor)

    @property
    def messages(self) -> list[Any]:
        with self._actor.cond:
            return list(self._actor.messages)

    def wait_for(self, match: Callable[[Any], bool], *, timeout: float, what: str = "message") -> Any:
        deadline = time.monotonic() + timeout
        with self._actor.cond:
            while True:
                for message in self._actor.messages:
                    if match(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}; got {self._actor.messages!r}")
                self._actor.cond.wait(remaining)

    def stop(self) -> None:
        self.ref.stop(timeout=2)
