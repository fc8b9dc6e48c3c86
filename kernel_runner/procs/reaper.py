"""The runner as a child subreaper: orphans of its children stay its descendants, are reaped when they end, and are
killed with everything else at the stop (docs/architecture.md §6).

Reaping never steals an exit status somebody waits for. Each ProcessWatcher waits for its own pid, and
`waitpid(-1)` would take the statuses it waits for (Popen then reports 0). The reaper waits only for pids it can
prove nobody in this process forked: a process forked here stays in the runner's session or leads its own
(setsid makes the session id the caller's pid), so a child whose session id is neither is an adopted orphan.
An orphan that leads its own session (a bare `setsid cmd &`) cannot be told from a child forked here; it is reaped
when the runner stops.

Reaping happens when SIGCHLD arrives, never on a timer: the signal's C handler writes into the main thread's wakeup
pipe (`signal.set_wakeup_fd`, see cli.py), so an idle runner is never woken. Orphans are adopted by the runner's
main thread (the kernel picks the subreaper's first live thread), so one small /proc read per SIGCHLD lists them.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import time
from pathlib import Path
from types import FrameType

import psutil
from loguru import logger

from kernel_runner.observability.debug_lines import debug

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
KILL_ROUNDS = 5
KILL_WAIT_S = 0.5  # per round: SIGKILL is not refused, only the kernel may take a moment


def become_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): processes orphaned below us are re-parented to us instead of to PID 1."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0
        error = os.strerror(ctypes.get_errno()) if failed else ""
    except (OSError, AttributeError) as exc:  # no prctl: not Linux, or a libc without it
        failed, error = True, repr(exc)
    if failed:
        logger.bind(child="reaper").warning("cannot become a child subreaper ({}); orphans go to PID 1", error)
    return not failed


def _session_of(pid: int) -> int | None:
    """The session id from /proc/<pid>/stat (None once the pid is gone); comm may hold spaces and parentheses."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # state ppid pgrp session ...
    return int(fields[3])


class OrphanReaper:
    """Reaps the orphans the runner adopts; the main thread calls `reap_adopted` each time SIGCHLD woke it."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._own_session = os.getsid(0)
        self._children_file = f"/proc/{self._pid}/task/{self._pid}/children"
        self._adopted: set[int] = set()  # proven orphans that are still running: only we will ever reap them
        self.log = logger.bind(child="reaper")

    def install(self) -> None:
        """SIGCHLD gets a Python handler that does nothing: only then does its C side write the wakeup fd
        (signal.set_wakeup_fd), which is how the main thread hears it. Main thread only."""
        signal.signal(signal.SIGCHLD, _ignore_in_python)

    def reap_adopted(self) -> list[int]:
        """Reap every adopted orphan that has ended; returns their pids."""
        reaped = []
        for pid in self._children():
            if pid not in self._adopted:
                session = _session_of(pid)
                if session is None or session in (pid, self._own_session):
                    continue  # forked here (or an orphan leading its own session): its owner or the stop reaps it
                self._adopted.add(pid)
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0  # gone already
            if done:
                self._adopted.discard(pid)
                reaped.append(pid)
                debug(self.log, "reaped adopted orphan {} ({})", pid, _describe(status))
        return reaped

    def _children(self) -> list[int]:
        """The main thread's children (where orphans land), read with plain fds: this runs on every SIGCHLD."""
        try:
            fd = os.open(self._children_file, os.O_RDONLY)
        except OSError:  # a kernel without /proc/<pid>/task/<tid>/children: the slower full scan
            return [proc.pid for proc in psutil.Process(self._pid).children()]
        try:
            return [int(pid) for pid in os.read(fd, 65536).split()]
        finally:
            os.close(fd)


def _ignore_in_python(_signum: int, _frame: FrameType | None) -> None:
    """SIGCHLD's Python handler: the main thread does the work, woken through the wakeup fd."""


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def kill_descendants() -> list[int]:
    """SIGKILL everything below this process (orphans included, as their subreaper); returns the pids killed.

    A few rounds, because a process killed while it forks may leave a child that the next round finds.
    """
    killed: list[int] = []
    for _ in range(KILL_ROUNDS):
        alive = [proc for proc in psutil.Process().children(recursive=True) if _not_zombie(proc)]
        if not alive:
            break
        pidfds = []
        for proc in alive:
            try:
                pidfd = os.pidfd_open(proc.pid)  # the signal and the wait then reach this process, never a reused pid
            except OSError:
                continue  # ended meanwhile
            pidfds.append(pidfd)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed.append(proc.pid)
            except OSError:
                pass
        _wait_ended(pidfds, timeout_s=KILL_WAIT_S)
    return killed


def _wait_ended(pidfds: list[int], *, timeout_s: float) -> None:
    """Wait (bounded) until each process has ended, without reaping it (its owner may still want the status)."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    pending = set(pidfds)
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for fd, _event in poller.poll(remaining * 1000):
                poller.unregister(fd)
                pending.discard(fd)
    finally:
        for fd in pidfds:
            os.close(fd)


def _not_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


__all__ = ["OrphanReaper", "become_subreaper", "kill_descendants"]
