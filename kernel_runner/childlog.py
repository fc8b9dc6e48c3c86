"""The recent log lines of each child, kept in memory for `kernel-runner ctl tail` (docs/operations.md §3).

A loguru sink: every record bound to a child (its lifecycle events, a service's stdout/stderr lines, its warnings)
lands in that child's bounded ring buffer. Followers (`ctl tail -f`) get each new line as it is logged. Memory is
bounded: so many lines per child, each cut to a length, and the buffers of so many children (the oldest one that
nobody follows is dropped first, so a runner that started thousands of services keeps a fixed footprint).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

LINES_PER_CHILD = 500
MAX_LINE_CHARS = 2000
MAX_CHILDREN = 256

Follower = Callable[[str], None]


def format_line(record: Record) -> str:
    text = f"{record['time']:%Y-%m-%d %H:%M:%S}.{record['time'].microsecond // 1000:03d} " \
           f"{record['level'].name: <7} {record['message']}"
    if record["exception"] is not None and record["exception"].value is not None:
        text += f" ({record['exception'].value!r})"
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + f" …[{len(text) - MAX_LINE_CHARS} more chars]"
    return text


class ChildLogBook:
    """Per-child ring buffers of formatted log lines, with live followers."""

    def __init__(self, *, lines_per_child: int = LINES_PER_CHILD, max_children: int = MAX_CHILDREN) -> None:
        self._lines_per_child = lines_per_child
        self._max_children = max_children
        self._lock = threading.Lock()
        self._buffers: collections.OrderedDict[str, collections.deque[str]] = collections.OrderedDict()
        self._followers: dict[str, list[Follower]] = {}
        self._sink_id: int | None = None

    # ---- as a loguru sink -------------------------------------------------------------------------------------------
    def install(self, level: str | int = "INFO") -> ChildLogBook:
        self._sink_id = logger.add(self.sink, level=level, format="{message}", backtrace=False, diagnose=False,
                                   catch=True)
        return self

    def uninstall(self) -> None:
        if self._sink_id is not None:
            logger.remove(self._sink_id)
            self._sink_id = None

    def sink(self, message: Message) -> None:
        record = message.record
        child = record["extra"].get("child")
        if not isinstance(child, str):
            return
        self.add(child, format_line(record))

    # ---- the book -----------------------------------------------------------------------------------------------------
    def add(self, child: str, line: str) -> None:
        with self._lock:
            buffer = self._buffers.get(child)
            if buffer is None:
                buffer = self._buffers[child] = collections.deque(maxlen=self._lines_per_child)
                self._drop_oldest_unfollowed()
            else:
                self._buffers.move_to_end(child)
            buffer.append(line)
            followers = list(self._followers.get(child, ()))
        for follower in followers:  # outside the lock: a follower may be slow (it only queues, by contract)
            follower(line)

    def _drop_oldest_unfollowed(self) -> None:
        excess = len(self._buffers) - self._max_children
        for name in list(self._buffers):
            if excess <= 0:
                break
            if not self._followers.get(name):
                del self._buffers[name]
                excess -= 1

    def children(self) -> list[str]:
        with self._lock:
            return list(self._buffers)

    def tail(self, child: str, lines: int) -> list[str]:
        with self._lock:
            buffer = self._buffers.get(child)
            if buffer is None or lines <= 0:
                return []
            return list(buffer)[-lines:]

    def follow(self, child: str, follower: Follower, *, lines: int = 0) -> tuple[list[str], Callable[[], None]]:
        """The last `lines` lines and, from then on, each new line to `follower` (which must not block: it runs
        in the logging thread). Returns the backlog and a function that stops following."""
        with self._lock:
            buffer = self._buffers.get(child)
            backlog = list(buffer)[-lines:] if buffer is not None and lines > 0 else []
            self._followers.setdefault(child, []).append(follower)

        def unfollow() -> None:
            with self._lock:
                followers = self._followers.get(child, [])
                if follower in followers:
                    followers.remove(follower)
                if not followers:
                    self._followers.pop(child, None)

        return backlog, unfollow


__all__ = ["LINES_PER_CHILD", "ChildLogBook", "format_line"]
