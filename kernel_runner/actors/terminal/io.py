"""The TerminalActor's helper threads (SUB socket, pty output, `%show graph`'s git) and its pty helpers (docs/protocol.md §8.3).

Who owns what (the actor's own share is described in terminal.py):

* TermInputReceiver (thread): the SUB socket, bound on `term_in_port` and subscribed to everything. It tells the
  actor `TerminalInput(first frame)` and never touches the pty.
* PtyReader (one thread per shell): its own dup of the pty master, read only. It takes a credit per chunk, tells the
  actor `PtyOutput`, and at EOF/EIO closes its fd and tells `PtyClosed`. The actor publishes the chunk and gives the
  credit back, so a chatty shell cannot flood the actor's inbox.
* GitGraphJob (one thread per `%show graph`): runs git with a bound and tells `GitGraphDone`.

A chunk or message that makes a reader's handler fail is logged (with a bounded prefix) and dropped; the reader goes
on. If a reader thread ends anyway, the actor hears it: PtyReader always ends with `PtyClosed` (the shell is then
restarted with a new reader), TermInputReceiver with `TermInputReceiverDied` (the actor ends its incarnation and the
supervisor restarts it), GitGraphJob with its `GitGraphDone`.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs
import pykka
import zmq
from loguru import logger

from kernel_runner.actors.terminal.commands import (
    BRANCH_LOG_ARGS,
    EXIT_FAILED,
    EXIT_NOT_A_COMMAND,
    EXIT_OK,
    EXIT_TIMEOUT,
    build_graph,
    commit_log_args,
    git_argv,
    parse_branch_map,
)
from kernel_runner.excerpts import excerpt
from kernel_runner.ids import TERMINAL_CHILD, RunId
from kernel_runner.messages import (
    GitGraphDone,
    PtyClosed,
    PtyOutput,
    TerminalInput,
)
from kernel_runner.notices import notice_bytes
from kernel_runner.observability.debug_lines import debug
from kernel_runner.procs.process import ProcessHandle, describe_returncode
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.wire.outbox import Credits
from kernel_runner.wire.sockets import bind_socket

POLL_MS = 100
READ_CHUNK = 4096  # docs/protocol.md §8.3: the output pump publishes reads of up to 4096 bytes, untransformed
DRAIN_QUIET_MS = 100
DRAIN_MAX_S = 1.0
REAP_TIMEOUT_S = 1.0
EXIT_UNAVAILABLE = 127  # the terminal could not take or finish the op (same code as the language runner's reject)

# Popen's start_new_session made the child a session leader; this makes the pty its controlling terminal (so ^C,
# job control and SIGWINCH work) and then becomes the shell with the same pid. A separate interpreter keeps Python
# code out of the forked child (no preexec_fn in a threaded process).
CTTY_SHIM = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "try:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "except OSError as exc:\n"
    "    sys.stderr.write('kernel-runner: cannot start the shell %r: %s\\r\\n' % (sys.argv[1], exc.strerror))\n"
    "    sys.exit(127)\n"
)


@attrs.frozen(kw_only=True)
class TermInputReceiverDied:
    """The terminal input thread ended without being asked to: terminal input is gone until the actor is restarted."""

    error: str


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on the pty master; the kernel sends SIGWINCH to the shell's foreground job."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


# ---- helper threads ---------------------------------------------------------------------------------------------


class TermInputReceiver(threading.Thread):
    """Creates, binds, polls and closes the terminal SUB socket in its own thread; tells the actor each message."""

    def __init__(
        self, *, context: zmq.Context[Any], bind: str, port: int, owner: pykka.ActorRef[Any], credits: Credits
    ) -> None:
        super().__init__(name="TermInputReceiver", daemon=True)
        self._context = context
        self._bind = bind
        self._port = port
        self._owner = owner
        self._credits = credits
        self.bound: Future[int] = Future()
        self.stopping = threading.Event()
        self.log = logger.bind(child=TERMINAL_CHILD)

    def run(self) -> None:
        sock: zmq.Socket[bytes] = self._context.socket(zmq.SUB)
        died: str | None = "the thread ended unexpectedly"  # cleared on every planned way out
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            try:
                port = bind_socket(sock, self._bind, self._port)
            except zmq.ZMQError as exc:
                died = None  # the actor's start fails with this, through `bound`
                self.bound.set_exception(exc)
                return
            self.bound.set_result(port)
            self._serve(sock)
            died = None
        except Exception as exc:  # noqa: BLE001 - the actor hears of it below and ends its incarnation
            died = repr(exc)
            self.log.opt(exception=exc).error("terminal input receiver failed: {!r}", exc)
        finally:
            sock.close(linger=0)
            if died is not None and not self.stopping.is_set():
                if not self.bound.done():
                    self.bound.set_exception(RuntimeError(died))
                tell_if_alive(self._owner, TermInputReceiverDied(error=died))

    def _serve(self, sock: zmq.Socket[bytes]) -> None:
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
                if not self._take(frames):
                    debug(self.log, "terminal actor stopped; input receiver exits")
                    return

    def _take(self, frames: list[bytes]) -> bool:
        """One message; False once the actor is gone. A failure drops that message (logged), never the thread."""
        try:
            return self._forward(frames)
        except Exception as exc:  # noqa: BLE001 - logged with a bounded prefix, and the receiver goes on
            first = frames[0] if frames else b""
            self.log.opt(exception=exc).error(
                "terminal input of {} bytes dropped: {!r}; it starts {}", len(first), exc, excerpt(first)
            )
            return True

    def _forward(self, frames: list[bytes]) -> bool:
        # docs/protocol.md §8.3: the first frame of each message is written to the pty.
        if not frames or not frames[0] or not self._credits.take(self.stopping):
            return True
        return tell_if_alive(self._owner, TerminalInput(data=frames[0]))


class PtyReader(threading.Thread):
    """Reads one shell's pty through its own dup of the master fd until EIO (all slave fds closed) or a stop."""

    def __init__(self, *, fd: int, shell_id: int, owner: pykka.ActorRef[Any], credits: Credits) -> None:
        super().__init__(name=f"PtyReader-{shell_id}", daemon=True)
        self._fd = fd
        self._shell_id = shell_id
        self._owner = owner
        self._credits = credits
        self._drain = threading.Event()
        self.stopping = threading.Event()

    def drain(self) -> None:
        """The shell exited: read what is left until the pty stays quiet briefly, then close (background jobs may
        still hold the slave side, so EIO may never come)."""
        self._drain.set()

    def run(self) -> None:
        try:
            self._pump()
        except Exception as exc:  # noqa: BLE001 - PtyClosed below makes the actor restart the shell (and a reader)
            logger.bind(child=TERMINAL_CHILD).opt(exception=exc).error("pty reader {} failed: {!r}", self._shell_id, exc)
        finally:
            # Always told, however this thread ends: the actor then ends the shell, whose restart brings a new reader.
            os.close(self._fd)
            tell_if_alive(self._owner, PtyClosed(shell_id=self._shell_id))

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        drain_deadline: float | None = None
        while not self.stopping.is_set():
            draining = self._drain.is_set()
            if draining:
                drain_deadline = drain_deadline or time.monotonic() + DRAIN_MAX_S
                if time.monotonic() >= drain_deadline:
                    return
            if not poller.poll(DRAIN_QUIET_MS if draining else POLL_MS):
                if draining:
                    return
                continue
            try:
                data = os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError:  # EIO: every slave fd is closed, the shell and its jobs are gone
                return
            if not data or not self._take(data):
                return

    def _take(self, data: bytes) -> bool:
        """One chunk; False when the reader should end. A failure drops that chunk (logged), never the thread."""
        try:
            return self._forward(data)
        except Exception as exc:  # noqa: BLE001 - logged with a bounded prefix, and the reader goes on
            logger.bind(child=TERMINAL_CHILD).opt(exception=exc).error(
                "pty output of {} bytes dropped: {!r}; it starts {}", len(data), exc, excerpt(data)
            )
            return True

    def _forward(self, data: bytes) -> bool:
        if not self._credits.take(self.stopping):
            return False
        return tell_if_alive(self._owner, PtyOutput(shell_id=self._shell_id, data=data))


class GitGraphJob(threading.Thread):
    """Runs the two `git log` commands of `%show graph` in `path` (never chdir-ing the runner) within one deadline."""

    def __init__(
        self,
        *,
        run_id: RunId,
        path: Path,
        env: Mapping[str, str],
        owner: pykka.ActorRef[Any],
        timeout_s: float,
        max_commits: int,
    ) -> None:
        super().__init__(name=f"GitGraphJob-{run_id}", daemon=True)
        self._run_id = run_id
        self._path = path
        self._env = {**env, "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat"}
        self._owner = owner
        self._timeout_s = timeout_s
        self._max_commits = max_commits
        self._lock = threading.Lock()
        self._handle: ProcessHandle | None = None
        self._cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            handle = self._handle
        if handle is not None:
            handle.kill_tree()

    def run(self) -> None:
        # The op must end with one Finished however this thread ends: the result is told in any case.
        result = self._failed(EXIT_FAILED, "kernel-runner: %show graph failed\n")
        try:
            result = self._graph()
        except Exception as exc:  # noqa: BLE001 - logged; the op ends with the failure
            logger.bind(child=TERMINAL_CHILD).opt(exception=exc).error("%show graph failed: {!r}", exc)
            result = self._failed(EXIT_FAILED, f"kernel-runner: %show graph failed: {excerpt(repr(exc))}\n")
        finally:
            tell_if_alive(self._owner, result)

    def _failed(self, exit_code: int, text: str | bytes) -> GitGraphDone:
        """A failure notice, bounded (docs/protocol.md §2.5): git's stderr or ours, which may quote the user's path."""
        data = notice_bytes(text if isinstance(text, str) else text.decode("utf-8", errors="replace"))
        return GitGraphDone(run_id=self._run_id, exit_code=exit_code, commits=None, stderr=data)

    def _graph(self) -> GitGraphDone:
        if not self._path.is_dir():
            return self._failed(EXIT_FAILED, f"kernel-runner: %show graph: {excerpt(str(self._path))} is not a directory\n")
        deadline = time.monotonic() + self._timeout_s
        branches = self._git(BRANCH_LOG_ARGS, deadline)
        if isinstance(branches, GitGraphDone):
            return branches
        # One more than the bound tells us whether the history was cut.
        log = self._git(commit_log_args(self._max_commits + 1), deadline)
        if isinstance(log, GitGraphDone):
            return log
        commits = build_graph(parse_branch_map(branches), log)
        note = b""
        if len(commits) > self._max_commits:
            commits = commits[len(commits) - self._max_commits :]
            note = f"kernel-runner: %show graph: showing the latest {self._max_commits} commits only\n".encode()
        return GitGraphDone(run_id=self._run_id, exit_code=EXIT_OK, commits=tuple(commits), stderr=note)

    def _git(self, args: Sequence[str], deadline: float) -> str | GitGraphDone:
        argv = git_argv(args)
        with self._lock:
            if self._cancelled:
                return self._failed(EXIT_UNAVAILABLE, "kernel-runner: %show graph was cancelled\n")
            try:
                handle = ProcessHandle.spawn(argv, env=self._env, cwd=self._path)
            except FileNotFoundError:
                return self._failed(EXIT_NOT_A_COMMAND, "kernel-runner: %show graph: git is not installed\n")
            except OSError as exc:
                return self._failed(EXIT_FAILED, f"kernel-runner: %show graph: cannot run git: {exc}\n")
            self._handle = handle
        try:
            out, err = handle.popen.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            handle.kill_tree()
            try:
                handle.popen.communicate(timeout=REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            return self._failed(EXIT_TIMEOUT, f"kernel-runner: %show graph: git did not finish within {self._timeout_s:g}s\n")
        finally:
            with self._lock:
                self._handle = None
        returncode = handle.popen.returncode
        if returncode != 0:
            exit_code, _ = describe_returncode(returncode)
            return self._failed(exit_code or EXIT_FAILED, err or f"kernel-runner: git exited with code {returncode}\n".encode())
        return out.decode("utf-8", errors="replace")


__all__ = [
    "GitGraphJob",
    "PtyReader",
    "TermInputReceiver",
    "TermInputReceiverDied",
    "set_winsize",
]
