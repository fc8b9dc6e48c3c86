"""Process mechanism: spawn in a new session, signal the group, stop or kill the tree, and the threads that watch them.

`stop_process` is the one way any actor stops a process: signal its group (at once, from the caller), wait,
escalate, and finally SIGKILL the whole tree, the waiting done in a thread so the owning actor never waits
(docs/architecture.md §6).
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import os
import queue
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

from kernel_runner.ids import Pid
from kernel_runner.messages import OutputSynced, PipeClosed, ProcessExited, StreamName
from kernel_runner.observability.debug_lines import debug
from kernel_runner.procs.wakeup import WakeupPipe
from kernel_runner.supervision.clock import REAL_CLOCK, Clock
from kernel_runner.supervision.refs import tell_if_alive

if TYPE_CHECKING:
    from loguru import Logger

READ_CHUNK = 1024 * 1024  # docs/protocol.md §2.5: a stdout/stderr record is at most 1 MiB
PIPE_SIZE = 1024 * 1024  # room for a fast writer while the reader hands a chunk on (Linux's default limit)
# A writer slower than the reader (most write 4-64 KiB at a time) would cost a hand-off per write: once a pipe is
# drained with less than TRICKLE_BELOW bytes, for the second time within FLOW_GAP_S, the watcher lets the pipes fill
# for TRICKLE_PAUSE_S before it reads again (docs/architecture.md §6). A first chunk (an `echo`) is never held.
TRICKLE_BELOW = 256 * 1024
TRICKLE_PAUSE_S = 0.0005
FLOW_GAP_S = 0.005
BURST_POLLS = 4
EXIT_AFTER_EOF_MS = 5
READS_PER_EVENT = 8
GROUP_POLL_S = 0.02


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent_thread(parent_pid: int) -> Callable[[], None]:
    """The child-side half of `dies_with_spawning_thread`: everything it calls is resolved before the fork, because
    between fork and exec only the forking thread exists and no lock may be taken."""
    prctl, getppid, kill, own_pid = _LIBC.prctl, os.getppid, os.kill, os.getpid

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if getppid() != parent_pid:  # the runner died between fork and prctl: nobody will send the signal now
            kill(own_pid(), signal.SIGKILL)

    return set_parent_death_signal


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
        dies_with_spawning_thread: bool = False,
    ) -> ProcessHandle:
        """`dies_with_spawning_thread`: the process gets SIGKILL when the spawning thread ends, so a SIGKILLed runner
        takes it along (PR_SET_PDEATHSIG). Only for a thread that outlives its process (a service's actor thread);
        it costs a real fork instead of vfork, about 4 ms a spawn (docs/architecture.md §6)."""
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
            # Safe with threads here: the hook calls only functions resolved before the fork and takes no lock.
            preexec_fn=_die_with_parent_thread(os.getpid()) if dies_with_spawning_thread else None,  # noqa: PLW1509
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
        """Every process below this one, found through its threads' /proc children lists: a few small reads per
        process of the tree, where psutil's `children` reads every process on the machine (with 100 services
        stopping at once, that full scan per service was most of the runner's stop; docs/architecture.md §6)."""
        found = []
        for pid in descendant_pids(self.pid):
            try:
                found.append(psutil.Process(pid))
            except psutil.Error:
                pass  # ended meanwhile
        return found

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


_HAS_CHILDREN_LISTS = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


def descendant_pids(pid: int) -> list[int]:
    """The pids below `pid` (children first), from /proc/<pid>/task/<tid>/children; psutil's full scan of /proc
    on a kernel without those lists (CONFIG_PROC_CHILDREN). Like any scan it races with forks and exits; the
    runner's last sweep (`reaper.kill_descendants`) still reads every process."""
    if not _HAS_CHILDREN_LISTS:
        try:
            return [proc.pid for proc in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # ended (or never ours to read): nothing below it is reachable this way
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as lines:
                    children = [int(child) for child in lines.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            pending.extend(children)
    return found


def describe_returncode(returncode: int) -> tuple[int, int | None]:
    """Popen gives -N for a signal; the agent expects the shell convention 128+N as the exit code."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


OutputSink = Callable[[StreamName, bytes], None]


class ProcessWatcher:
    """Watches one process: reads its pipes until EOF into a sink and reports its exit, in whatever order they come.

    It tells its owner `ProcessExited` once the process has been reaped (it waits for that pid only: never
    waitpid(-1), which would steal other children's exit statuses) and `PipeClosed` for each pipe at EOF, each chunk
    having gone to the sink before. The sink may block (output credits): that is the backpressure on the child.
    A pidfd makes the exit one more event to wait for, so one thread watches it all; the thread comes from a small
    pool of idle ones (`watch_process`), because starting a thread costs more than spawning the process.

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
        for fd in self._pipes:
            _widen_pipe(fd)
            os.set_blocking(fd, False)  # read until the pipe is empty without a poll per chunk
        self._lock = threading.Lock()
        self._syncs: list[object] = []
        self._done = False
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None  # the pool thread running it
        self._pidfd: int | None = None
        self._reports: list[object] = []  # owner messages of the current burst
        self._wakeup = WakeupPipe()
        self._last_drained_at = -1.0  # when a read last found a pipe empty after taking some bytes
        self._trickling = False

    def sync(self, token: object) -> bool:
        """Ask for OutputSynced(token) once the output written so far went to the sink; False: the watcher has ended
        (everything was delivered already), so nothing will be told."""
        with self._lock:
            if self._done:
                return False
            self._syncs.append(token)
            self._wakeup.wake()
        return True

    def is_alive(self) -> bool:
        return not self._finished.is_set()

    def join(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    def run(self) -> None:
        self._thread = threading.current_thread()
        try:
            self._watch()
        finally:
            with self._lock:
                self._done = True
                pending, self._syncs = self._syncs, []
                self._wakeup.close()
            for token in pending:  # everything has been read: the answer is due at once
                tell_if_alive(self._owner, OutputSynced(pid=self._handle.pid, token=token))
            self._finished.set()

    def _watch(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self._handle.pid)
        except OSError:  # the process is gone already (reaped elsewhere is impossible: only we wait for it)
            self._pidfd = None
        poller = select.poll()
        poller.register(self._wakeup.fd, select.POLLIN)
        for fd in self._pipes:
            poller.register(fd, select.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        else:  # no pidfd on this kernel: wait for the exit in a thread of its own, so pipes never stall it
            threading.Thread(target=self._reap, name=f"Reaper-{self._handle.pid}", daemon=True).start()
        try:
            while self._pipes or self._pidfd is not None:
                events = poller.poll()
                # A process's end is a burst (EOF on each pipe, then the exit): take what is ready at once, then
                # tell the owner everything together, instead of waking it (and trading the GIL) once per event.
                had_pipes = bool(self._pipes)
                for _ in range(BURST_POLLS):
                    for fd, _event in events:
                        self._handle_event(fd, poller)
                    events = poller.poll(0) if self._pipes or self._pidfd is not None else []
                    if not events and had_pipes and not self._pipes and self._pidfd is not None:
                        # The last pipe just closed: the exit is usually a moment behind. Waiting a little for it
                        # tells the owner the whole end at once (one wake-up of the owner instead of two).
                        had_pipes = False
                        events = poller.poll(EXIT_AFTER_EOF_MS)
                    if not events:
                        break
                self._tell_reports()
                if self._trickling:
                    self._trickling = False
                    if self._pipes:
                        time.sleep(TRICKLE_PAUSE_S)  # the writer refills the pipe meanwhile: fewer, bigger chunks
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
            for stream, _name in self._pipes.values():
                stream.close()
            self._tell_reports()

    def _handle_event(self, fd: int, poller: select.poll) -> None:
        if fd == self._pidfd:
            poller.unregister(fd)
            os.close(fd)
            self._pidfd = None
            self._reap()
        elif fd in self._pipes:
            self._read(fd, poller)
        elif fd == self._wakeup.fd:
            self._answer_syncs(poller)

    def _report(self, message: object) -> None:
        if threading.current_thread() is self._thread:
            self._reports.append(message)  # told at the end of the burst, in order
        else:
            tell_if_alive(self._owner, message)  # the fallback reaper thread

    def _tell_reports(self) -> None:
        reports, self._reports = self._reports, []
        for message in reports:
            tell_if_alive(self._owner, message)

    def _answer_syncs(self, poller: select.poll) -> None:
        with self._lock:
            tokens, self._syncs = self._syncs, []
            self._wakeup.drain()
        for fd in list(self._pipes):  # what the pipes hold now, not what a chatty process writes meanwhile
            pending = _bytes_waiting(fd)
            while pending > 0 and fd in self._pipes:
                got = self._read(fd, poller)
                if not got:
                    break
                pending -= got
        for token in tokens:
            self._report(OutputSynced(pid=self._handle.pid, token=token))

    def _read(self, fd: int, poller: select.poll) -> int:
        """Read what the pipe holds (a few chunks at most) into the sink; at EOF close it and tell PipeClosed.

        Returns the bytes read.
        """
        stream, name = self._pipes[fd]
        total = 0
        for _ in range(READS_PER_EVENT):
            try:
                data = os.read(fd, self._chunk_size)
            except BlockingIOError:
                if total:
                    self._note_drained(total)
                return total  # empty for now: back to poll
            except OSError as exc:
                debug(logger.bind(child="pump"), "read from {} failed: {}", name, exc)
                data = b""
            if not data:
                break
            if self._sink is not None:
                self._sink(name, data)
            total += len(data)
        else:
            return total  # more may be waiting: poll again, so the exit and sync requests are not starved
        poller.unregister(fd)
        del self._pipes[fd]
        stream.close()
        self._report(PipeClosed(pid=self._handle.pid, stream=name))
        return total

    def _note_drained(self, total: int) -> None:
        """A pipe ran empty after `total` bytes: a small take soon after the last one means a writer slower than us."""
        now = self._clock.monotonic()
        if total < TRICKLE_BELOW and now - self._last_drained_at < FLOW_GAP_S:
            self._trickling = True
        self._last_drained_at = now

    def _reap(self) -> None:
        returncode = self._handle.popen.wait()
        self._handle.exited.set()
        _, sig = describe_returncode(returncode)
        self._report(ProcessExited(pid=self._handle.pid, returncode=returncode, signal=sig, at=self._clock.monotonic()))


def _widen_pipe(fd: int) -> None:
    """Bigger pipes mean bigger reads, so a fast writer costs fewer chunks (and Python) per MiB."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # above this system's pipe-max-size: the default size works, only slower


def _bytes_waiting(fd: int) -> int:
    """How many bytes a pipe holds right now (FIONREAD)."""
    count: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    return count


class WorkerPool:
    """Threads that run one job after another: a few idle ones wait (blocked, no timeout) for the next job.

    A job is handed to an idle thread in microseconds; when none is idle a new thread is started, and a thread that
    finds `keep_idle` others idle already ends instead of waiting.
    """

    def __init__(self, name: str, keep_idle: int) -> None:
        self._name = name
        self._keep_idle = keep_idle
        self._lock = threading.Lock()
        self._idle = 0
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._started = itertools.count(1)

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(target=self._work, args=(job,), name=f"{self._name}-{next(self._started)}", daemon=True).start()

    def _work(self, job: Callable[[], None]) -> None:
        while True:
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - a job's bug must not cost the pool a thread silently
                logger.bind(child="pool").opt(exception=exc).error("{} job failed: {!r}", self._name, exc)
            with self._lock:
                if self._idle >= self._keep_idle:
                    return
                self._idle += 1
            job = self._jobs.get()


WATCHERS = WorkerPool("ProcessWatcher", keep_idle=4)


def watch_process(
    handle: ProcessHandle, owner: pykka.ActorRef[Any], *, sink: OutputSink | None = None, clock: Clock = REAL_CLOCK
) -> ProcessWatcher:
    watcher = ProcessWatcher(handle, owner, sink=sink, clock=clock)
    WATCHERS.submit(watcher.run)
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

    The first step's signals go out from the caller (`stop_process`), at once; the waits and any escalation run in
    this thread, so the owning actor never waits; the process's exit still reaches the owner through its
    ProcessWatcher, as any exit does.
    """

    def __init__(self, handle: ProcessHandle, steps: Sequence[StopStep], *, log: Logger, what: str) -> None:
        super().__init__(name=f"GroupStopper-{handle.pid}", daemon=True)
        self._handle = handle
        self._steps = tuple(steps)
        self._log = log
        self._what = what
        self._cancelled = threading.Event()
        self._snapshot: list[psutil.Process] = []

    def cancel(self) -> None:
        """The owner no longer cares (it ended and killed the tree itself)."""
        self._cancelled.set()

    def begin(self) -> None:
        """The first step's signals, sent by the caller at once (a few syscalls, no wait): with 100 services
        stopping together, a signal sent from each new thread would wait for that thread to get the GIL."""
        self._snapshot = self._handle.descendants()  # a grandchild may leave the group; it still goes with the tree
        if self._steps:
            self._signal(self._steps[0])
        self.start()

    def _signal(self, step: StopStep) -> None:
        for sig in step.signals:
            self._handle.signal_group(sig)

    def run(self) -> None:
        for number, step in enumerate(self._steps):
            if number:
                names = "+".join(signal.Signals(sig).name for sig in step.signals) or "no signal"
                self._log.warning("{} still running; {} to group {}", self._what, names, self._handle.pid)
                self._signal(step)
            if self._wait_gone(step.wait_s):
                return
        if not self._cancelled.is_set():
            self._log.warning("{} did not stop within its grace; SIGKILL to its tree", self._what)
            self._handle.kill_tree(also=self._snapshot)

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
    stopper.begin()
    return stopper
