"""Process mechanism: spawn in a new session, signal the group, kill the tree, and the threads that watch them."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil
import pykka
from loguru import logger

from kernel_runner.clock import REAL_CLOCK, Clock
from kernel_runner.ids import Pid
from kernel_runner.messages import PipeClosed, ProcessExited, StreamName

READ_CHUNK = 64 * 1024


class ProcessHandle:
    """A Popen in its own session, so one signal reaches every process the command started."""

    def __init__(self, popen: subprocess.Popen[bytes], argv: Sequence[str], cwd: Path | None) -> None:
        self.popen = popen
        self.pid = Pid(popen.pid)
        self.argv = tuple(argv)
        self.cwd = cwd

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

    def kill_tree(self) -> None:
        """SIGKILL the group and every descendant psutil can still find (some may have left the group)."""
        stragglers = self.descendants()
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


class ExitWatcher(threading.Thread):
    """Waits for exactly one pid (never waitpid(-1), which steals other children's statuses) and tells its owner."""

    def __init__(
        self,
        handle: ProcessHandle,
        owner: pykka.ActorRef[Any],
        *,
        clock: Clock = REAL_CLOCK,
        before_report: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name=f"ExitWatcher-{handle.pid}", daemon=True)
        self._handle = handle
        self._owner = owner
        self._clock = clock
        self._before_report = before_report

    def run(self) -> None:
        returncode = self._handle.popen.wait()
        if self._before_report is not None:
            self._before_report()
        _, sig = describe_returncode(returncode)
        message = ProcessExited(pid=self._handle.pid, returncode=returncode, signal=sig, at=self._clock.monotonic())
        try:
            self._owner.tell(message)
        except pykka.ActorDeadError:
            pass


OutputSink = Callable[[StreamName, bytes], None]


class PipePump(threading.Thread):
    """Reads one pipe until EOF and hands each chunk to a sink; the sink may block, which is the backpressure."""

    def __init__(
        self,
        stream: IO[bytes],
        *,
        name: StreamName,
        pid: Pid,
        sink: OutputSink,
        owner: pykka.ActorRef[Any] | None,
        chunk_size: int = READ_CHUNK,
    ) -> None:
        super().__init__(name=f"PipePump-{name}-{pid}", daemon=True)
        self._stream = stream
        self._name: StreamName = name
        self._pid = pid
        self._sink = sink
        self._owner = owner
        self._chunk_size = chunk_size

    def run(self) -> None:
        fd = self._stream.fileno()
        try:
            while True:
                try:
                    data = os.read(fd, self._chunk_size)
                except OSError as exc:
                    logger.bind(child="pump").debug("read from {} failed: {}", self._name, exc)
                    break
                if not data:
                    break
                self._sink(self._name, data)
        finally:
            try:
                self._stream.close()
            except OSError:
                pass
            if self._owner is not None:
                try:
                    self._owner.tell(PipeClosed(pid=self._pid, stream=self._name))
                except pykka.ActorDeadError:
                    pass
