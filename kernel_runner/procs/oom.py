"""Which processes an out-of-memory kill probably took: the report behind the agent's `event` op (docs/protocol.md §9.4).

When Docker tells the agent of an OOM kill, the killed process is already gone, and nothing in the container says which
it was: the runner compares the processes alive after the event with what an earlier look saw. A look reads a few
files in /proc per process below the runner; the looks come every 2 s while something changes there (a process starts
or ends, or its memory moves by an eighth) and back off to one in 10 s while nothing does, so a runner at rest wakes for
them once in 10 s. Everything runs in the watch's own thread; the agent link only hands the event over.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable, Mapping

import attrs
import psutil
from loguru import logger

from kernel_runner.excerpts import excerpt
from kernel_runner.messages import AgentEvent
from kernel_runner.procs.process import descendant_pids

MIB = 1024 * 1024
LOOK_MIN_S = 2.0  # upstream 23.03.8 looked every 2 s, always
LOOK_MAX_S = 10.0
# After an `oom` event, looks go on this long (every SETTLE_LOOK_S) until one finds a process gone: the event can come
# before the killed process has ended (upstream waited up to 15 s).
SETTLE_S = 5.0
SETTLE_LOOK_S = 0.5
# A process found gone this long before the event still counts: a look may have come between the kill and the event.
RECENT_S = 15.0
MAX_NAMED = 5  # processes one report names, the largest first
COMMAND_CHARS = 160
EVENTS_KEPT = 64  # events waiting for the watch's thread; an agent that floods them loses the oldest


@attrs.frozen(kw_only=True)
class SeenProcess:
    """A process as a look saw it; `started` (the kernel's start time) tells a pid given to a new process apart."""

    pid: int
    ppid: int
    name: str
    command: str
    rss: int  # bytes, at this look
    started: float
    # The most any look saw (bytes): a process being killed frees its memory before it is gone, so the last look
    # may find it with next to nothing (ProcessBook.record keeps the maximum).
    peak_rss: int = attrs.field(default=attrs.Factory(lambda self: self.rss, takes_self=True))


def look_below(root_pid: int, known: dict[tuple[int, float], tuple[str, str]]) -> dict[int, SeenProcess]:
    """Every live process below `root_pid` (zombies are dead already); `known` keeps each one's name and command line
    between looks, so a process already seen costs two small reads (stat, statm)."""
    seen: dict[int, SeenProcess] = {}
    for pid in descendant_pids(root_pid):
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                started, ppid, rss = proc.create_time(), proc.ppid(), proc.memory_info().rss
                details = known.get((pid, started))
                if details is None:
                    name = proc.name()
                    details = known[(pid, started)] = (name, " ".join(proc.cmdline()) or name)
        except psutil.Error:
            continue  # it ended (or was never ours to read) while we looked
        seen[pid] = SeenProcess(pid=pid, ppid=ppid, name=details[0], command=details[1], rss=rss, started=started)
    for pid, started in [key for key in known if key[0] not in seen or seen[key[0]].started != key[1]]:
        del known[(pid, started)]
    return seen


def _memory_moved(before: int, after: int) -> bool:
    return abs(after - before) > max(before // 8, 16 * MIB)


class ProcessBook:
    """What the looks saw: the processes alive at the last one, and those found gone since, for `keep_s`."""

    def __init__(self, *, keep_s: float) -> None:
        self.alive: dict[int, SeenProcess] = {}
        self._keep_s = keep_s
        self._gone: collections.deque[tuple[float, SeenProcess]] = collections.deque()

    def record(self, seen: Mapping[int, SeenProcess], now: float) -> bool:
        """Take one look's result; True when something changed (a process started or ended, or its memory moved)."""
        changed = False
        alive = dict(seen)
        for pid, before in self.alive.items():
            after = seen.get(pid)
            if after is None or after.started != before.started:
                self._gone.append((now, before))
                changed = True
                continue
            if _memory_moved(before.rss, after.rss):
                changed = True
            if before.peak_rss > after.peak_rss:
                alive[pid] = attrs.evolve(after, peak_rss=before.peak_rss)
        if any(pid not in self.alive for pid in seen):
            changed = True
        self.alive = alive
        while self._gone and now - self._gone[0][0] > self._keep_s:
            self._gone.popleft()
        return changed

    def gone_since(self, since: float) -> list[SeenProcess]:
        """Processes found gone at a look at or after `since`, the largest first (the OOM killer's likely pick)."""
        return sorted((proc for found, proc in self._gone if found >= since), key=lambda proc: proc.peak_rss,
                      reverse=True)

    def largest(self, count: int) -> list[SeenProcess]:
        return sorted(self.alive.values(), key=lambda proc: proc.rss, reverse=True)[:count]

    def name_of(self, pid: int) -> str | None:
        if pid in self.alive:
            return self.alive[pid].name
        return next((proc.name for _found, proc in reversed(self._gone) if proc.pid == pid), None)


class ProcessWatch:
    """Looks at the processes below the runner now and then, and reports on the agent's events, in its own thread."""

    def __init__(self, root_pid: int, *, settle_s: float = SETTLE_S) -> None:
        self._root_pid = root_pid
        self._settle_s = settle_s
        self._book = ProcessBook(keep_s=RECENT_S + LOOK_MAX_S)
        self._known: dict[tuple[int, float], tuple[str, str]] = {}
        self._events: collections.deque[tuple[float, AgentEvent]] = collections.deque(maxlen=EVENTS_KEPT)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ProcessWatch", daemon=True)
        self.log = logger.bind(child="runner")

    def start(self) -> ProcessWatch:
        self._thread.start()
        return self

    def tell(self, event: AgentEvent) -> None:
        """From any thread (the agent link's): queue the event and wake the watch; never blocks."""
        self._events.append((time.monotonic(), event))
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        wait_s = LOOK_MIN_S
        while not self._stopping.is_set():
            self._wake.wait(wait_s)
            if self._stopping.is_set():
                return
            self._wake.clear()
            events = [self._events.popleft() for _ in range(len(self._events))]
            try:
                changed = self._look()
                self._answer(events)
            except Exception as exc:  # noqa: BLE001 - the watch must outlive a surprise in /proc or psutil
                self.log.opt(exception=exc).error("the process watch failed a look: {!r}", exc)
                changed = True
            wait_s = LOOK_MIN_S if changed or events else min(wait_s * 2, LOOK_MAX_S)

    def _look(self) -> bool:
        return self._book.record(look_below(self._root_pid, self._known), time.monotonic())

    def _answer(self, events: Iterable[tuple[float, AgentEvent]]) -> None:
        ooms = []
        for at, event in events:
            if event.type == "oom":
                ooms.append(at)
            else:
                self.log.info("agent event {}: nothing to do for it (data: {})", excerpt(event.type),
                              excerpt(repr(dict(event.data)), quote=False))
        if ooms:
            self._report_oom(min(ooms), len(ooms))

    def _report_oom(self, at: float, count: int) -> None:
        """One WARNING line: the processes found gone around the event, the largest first (docs/protocol.md §9.4)."""
        since = at - RECENT_S
        deadline = time.monotonic() + self._settle_s
        likely = self._book.gone_since(since)
        while not likely and time.monotonic() < deadline and not self._stopping.wait(SETTLE_LOOK_S):
            self._look()
            likely = self._book.gone_since(since)
        what = "the agent's oom event" if count == 1 else f"{count} oom events from the agent"
        if likely:
            named = "; ".join(self._describe(proc, proc.peak_rss) for proc in likely[:MAX_NAMED])
            more = f"; and {len(likely) - MAX_NAMED} more" if len(likely) > MAX_NAMED else ""
            self.log.warning("out of memory ({}): likely killed: {}{}", what, named, more)
            return
        largest = "; ".join(self._describe(proc, proc.rss) for proc in self._book.largest(3)) or "none"
        self.log.warning("out of memory ({}): no process below the runner ended within {:g} s of it (or {:g} s "
                         "before); the largest now: {}", what, self._settle_s, RECENT_S, largest)

    def _describe(self, proc: SeenProcess, rss: int) -> str:
        parent = "the runner" if proc.ppid == self._root_pid else \
            f"pid {proc.ppid} {_printable(self._book.name_of(proc.ppid) or '(unknown)')}"
        return (f"pid {proc.pid} {_printable(proc.name)}, rss {rss / MIB:,.0f} MiB, under {parent}: "
                f"{excerpt(proc.command, COMMAND_CHARS)}")


def _printable(name: str) -> str:
    """A process names itself: quoted when it holds what could forge a log line."""
    return name if name.isprintable() else excerpt(name)


__all__ = ["ProcessBook", "ProcessWatch", "SeenProcess", "look_below"]
