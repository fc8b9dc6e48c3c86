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
from pathlib import Path
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

    def __repr__(self) -> str:
        with self._lock:
            children = len(self._buffers)
        return f"ChildLogBook(children={children}, lines_per_child={self._lines_per_child})"

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




# loguru ends a string format with "\n{exception}" itself: one more "\n" here would put a blank line after every record.
FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}"


def log_file_name(child: str) -> str:
    """`service:jupyter` → `service_jupyter.log`: one flat folder, no separators a shell would trip on."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in child).lstrip(".")
    return f"{safe or 'unnamed'}.log"


class ChildLogFiles:
    """One rotating log file per child under a folder (`--child-log-dir`, docs/operations.md §4).

    loguru names a file by time, not by a record's field, so each child gets its own file handler, added when the
    supervisor is about to start the child for the first time (`open_for`, before its `starting` line), and the
    runner's own lines go to `runner.log`. Handlers are added there and never from inside a sink: loguru takes its
    own lock before a handler's (at fork, for one), and a sink that added a handler would take them the other way
    round.
    """

    def __init__(self, folder: Path, *, rotation: str, retention: int, level: str | int,
                 max_children: int = MAX_CHILDREN) -> None:
        self._folder = folder
        self._rotation = rotation
        self._retention = retention
        self._level = level
        self._max_children = max_children
        self._lock = threading.Lock()
        self._handlers: dict[str, int] = {}

    def install(self) -> ChildLogFiles:
        """Raises ValueError for a rotation loguru does not understand, OSError for a folder it cannot make."""
        self._folder.mkdir(parents=True, exist_ok=True)
        for name in RUNNER_LOGGERS:
            self.open_for(name)
        return self

    def uninstall(self) -> None:
        with self._lock:
            handlers, self._handlers = list(self._handlers.values()), {}
        for handler_id in handlers:
            logger.remove(handler_id)

    def open_for(self, child: str) -> None:
        """From now on, lines bound to `child` also go to its file (a second call does nothing)."""
        with self._lock:
            if child in self._handlers:
                return
            full = len(self._handlers) >= self._max_children + len(RUNNER_LOGGERS)
            if not full:
                self._handlers[child] = logger.add(
                    self._folder / log_file_name(child), level=self._level, format=FILE_FORMAT, filter=_only(child),
                    rotation=self._rotation, retention=self._retention, delay=True, backtrace=False,
                    diagnose=False, catch=True,
                )
        if full:
            logger.bind(child="runner").warning("per-child log files: {} children have one; {} is not given a file",
                                                self._max_children, child)


# The loggers that are not children but whose lines ops want in a file too.
RUNNER_LOGGERS = ("runner", "supervisor", "startup")


def _only(child: str) -> Callable[[Record], bool]:
    def keep(record: Record) -> bool:
        return record["extra"].get("child") == child

    return keep


__all__ = ["LINES_PER_CHILD", "ChildLogBook", "ChildLogFiles", "format_line", "log_file_name"]
