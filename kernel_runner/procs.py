"""Process mechanism: spawn in a new session, signal the group, stop or kill the tree, and the threads that watch them.

`stop_process` is the one way any actor stops a process: signal its group, wait, escalate, and finally SIGKILL the
whole tree, read top to bottom in one thread so the owning actor never waits (docs/architecture.md §6).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs
import psutil
import pykka
from loguru import logger

from kernel_runner.clock import REAL_CLOCK, Clock
from kernel_runner.ids import Pid
from kernel_runner.messages import OutputSynced, PipeClosed, ProcessExited, StreamName
from kernel_runner.refs import tell_if_alive

if TYPE_CHECKING:
    from loguru import Logger

READ_CHUNK = 64 * 1024
GROUP_POLL_S = 0.02


class ProcessHandle:
    """A Popen in its own session, so one signal reaches every process the command started."""

    def __init__(self, popen: subprocess.Popen[bytes], argv: Sequence[str], cwd: Path | None) -> None:
        self.popen = popen
        self.pid = Pid(popen.pid)
        self.argv = tuple(argv)
        self.cwd = cwd
        # Set by the ProcessWatcher once the process has been reaped.
        self.exited = threading.Event()

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        pass_fds: Sequence[int] = (),
    ) -> ProcessHandle:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=str(cwd) if cwd is not None else None,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
        return cls(popen, argv, cwd)

    def signal_group(self, sig: int) -> bool:
        """Signal the whole process group; False when it is already gone."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def group_alive(self) -> bool:
        """True while any process of the group exists (signal 0 probes without signalling)."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def kill_tree(self, also: Iterable[psutil.Process] = ()) -> None:
        """SIGKILL the group and every descendant psutil can still find (some may have left the group)."""
        stragglers = [*also, *self.descendants()]
        self.signal_group(signal.SIGKILL)
        for proc in stragglers:
            try:
                proc.kill()
            except psutil.Error:
                pass

    def poll(self) -> int | None:
        return self.popen.poll()


def describe_returncode(returncode: int) -> tuple[int, int | None]:
    """Popen gives -N for a signal; the agent expects the shell convention 128+N as the exit code."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


OutputSink = Callable[[StreamName, bytes], None]


class ProcessWatcher(threading.Thread):
    """One thread per process: reads its pipes until EOF into a sink and reports its exit, in whatever order they come.

    It tells its owner `ProcessExited` once the process has been reaped (it waits for that pid only: never
    waitpid(-1), which would steal other children's exit statuses) and `PipeClosed` for each pipe at EOF, each chunk
    having gone to the sink before. The sink may block (output credits): that is the backpressure on the child.
    A pidfd makes the exit one more event to wait for, so a spawn costs one thread, not three.

    `sync(token)` orders the owner's own messages after the process's output: the thread reads whatever the pipes
    hold at that moment into the sink, then tells `OutputSynced(token)` (a prompt the process printed before it
    asked for input reaches the agent before the owner's `waiting-input`).
    """

    def __init__(
        self,
        handle: ProcessHandle,
        owner: pykka.ActorRef[Any],
        *,
        sink: OutputSink | None = None,
        clock: Clock = REAL_CLOCK,
        chunk_size: int = READ_CHUNK,
    ) -> None:
        super().__init__(name=f"ProcessWatcher-{handle.pid}", daemon=True)
        self._handle = handle
        self._owner = owner
        self._sink = sink
        self._clock = clock
        self._chunk_size = chunk_size
        popen = handle.popen
        streams: tuple[tuple[IO[bytes] | None, StreamName], ...] = ((popen.stdout, "stdout"), (popen.stderr, "stderr"))
        self._pipes: dict[int, tuple[IO[bytes], StreamName]] = {
            stream.fileno(): (stream, name) for stream, name in streams if stream is not None
        }
        self._lock = threading.Lock()
        self._syncs: list[object] = []
        self._done = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def sync(self, token: object) -> bool:
        """Ask for OutputSynced(token) once the output written so far went to the sink; False: the watcher has ended
        (everything was delivered already), so nothing will be told."""
        with self._lock:
            if self._done:
                return False
            self._syncs.append(token)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # a wake-up is pending already
        return True

    def run(self) -> None:
        try:
            self._watch()
        finally:
            with self._lock:
                self._done = True
                pending, self._syncs = self._syncs, []
                os.close(self._wake_r)
                os.close(self._wake_w)
            for token in pending:  # everything has been read: the answer is due at once
                tell_if_alive(self._owner, OutputSynced(pid=self._handle.pid, token=token))

    def _watch(self) -> None:
        try:
            pidfd: int | None = os.pidfd_open(self._handle.pid)
        except OSError:  # the process is gone already (reaped elsewhere is impossible: only we wait for it)
            pidfd = None
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in self._pipes:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        else:  # no pidfd on this kernel: wait for the exit in a thread of its own, so pipes never stall it
            threading.Thread(target=self._reap, name=f"Reaper-{self._handle.pid}", daemon=True).start()
        try:
            while self._pipes or pidfd is not None:
                for fd, _event in poller.poll():
                    if fd == pidfd:
                        poller.unregister(pidfd)
                        os.close(pidfd)
                        pidfd = None
                        self._reap()
                    elif fd in self._pipes:
                        self._read(fd, poller)
                    elif fd == self._wake_r:
                        self._answer_syncs(poller)
        finally:
            if pidfd is not None:
                os.close(pidfd)
            for stream, _name in self._pipes.values():
                stream.close()

    def _answer_syncs(self, poller: select.poll) -> None:
        with self._lock:
            tokens, self._syncs = self._syncs, []
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        for fd in list(self._pipes):  # what the pipes hold now, not what a chatty process writes meanwhile
            pending = _bytes_waiting(fd)
            while pending > 0 and fd in self._pipes:
                pending -= self._read(fd, poller)
        for token in tokens:
            tell_if_alive(self._owner, OutputSynced(pid=self._handle.pid, token=token))

    def _read(self, fd: int, poller: select.poll) -> int:
        """One read into the sink; at EOF the pipe is closed and PipeClosed told. Returns the bytes read."""
        stream, name = self._pipes[fd]
        try:
            data = os.read(fd, self._chunk_size)
        except OSError as exc:
            logger.bind(child="pump").debug("read from {} failed: {}", name, exc)
            data = b""
        if data:
            if self._sink is not None:
                self._sink(name, data)
            return len(data)
        poller.unregister(fd)
        del self._pipes[fd]
        stream.close()
        tell_if_alive(self._owner, PipeClosed(pid=self._handle.pid, stream=name))
        return 0

    def _reap(self) -> None:
        returncode = self._handle.popen.wait()
        self._handle.exited.set()
        _, sig = describe_returncode(returncode)
        tell_if_alive(self._owner, ProcessExited(
            pid=self._handle.pid, returncode=returncode, signal=sig, at=self._clock.monotonic()))


def _bytes_waiting(fd: int) -> int:
    """How many bytes a pipe holds right now (FIONREAD)."""
    count: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    return count


def watch_process(
    handle: ProcessHandle, owner: pykka.ActorRef[Any], *, sink: OutputSink | None = None, clock: Clock = REAL_CLOCK
) -> ProcessWatcher:
    watcher = ProcessWatcher(handle, owner, sink=sink, clock=clock)
    watcher.start()
    return watcher


@attrs.frozen
class StopStep:
    """Send `signals` to the process group (none: the owner asked politely itself), then wait up to `wait_s`."""

    signals: tuple[int, ...]
    wait_s: float


def term_then_kill(grace_s: float) -> tuple[StopStep, ...]:
    """The usual stop: SIGTERM to the group, `grace_s` to go, then SIGKILL to the tree (OTP's shutdown timeout)."""
    return (StopStep((signal.SIGTERM,), grace_s),)


class GroupStopper(threading.Thread):
    """Walks one process group down its stop steps and ends with SIGKILL to the tree, unless the group is gone first.

    Runs as its own thread from top to bottom, so the owning actor never waits; the process's exit still reaches the
    owner through its ProcessWatcher, as any exit does.
    """

    def __init__(self, handle: ProcessHandle, steps: Sequence[StopStep], *, log: Logger, what: str) -> None:
        super().__init__(name=f"GroupStopper-{handle.pid}", daemon=True)
        self._handle = handle
        self._steps = tuple(steps)
        self._log = log
        self._what = what
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """The owner no longer cares (it ended and killed the tree itself)."""
        self._cancelled.set()

    def run(self) -> None:
        snapshot = self._handle.descendants()  # a grandchild may leave the group; it still goes with the tree
        for number, step in enumerate(self._steps):
            names = "+".join(signal.Signals(sig).name for sig in step.signals) or "no signal"
            if number:
                self._log.warning("{} still running; {} to group {}", self._what, names, self._handle.pid)
            for sig in step.signals:
                self._handle.signal_group(sig)
            if self._wait_gone(step.wait_s):
                return
        if not self._cancelled.is_set():
            self._log.warning("{} did not stop within its grace; SIGKILL to its tree", self._what)
            self._handle.kill_tree(also=snapshot)

    def _wait_gone(self, timeout_s: float) -> bool:
        """True once the leader is reaped and nothing is left in its group (or the owner cancelled)."""
        deadline = time.monotonic() + timeout_s
        self._handle.exited.wait(timeout_s)
        while self._handle.group_alive():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._cancelled.wait(min(GROUP_POLL_S, remaining)):
                return self._cancelled.is_set()
        return True


def stop_process(handle: ProcessHandle, steps: Sequence[StopStep], *, log: Logger, what: str) -> GroupStopper:
    """Stop `handle`'s group per `steps`, then SIGKILL its tree; the one stop escalation every actor uses."""
    stopper = GroupStopper(handle, steps, log=log, what=what)
    stopper.start()
    return stopper
