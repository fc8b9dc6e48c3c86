"""The language runner's batch jobs: their processes and pipes, apart from the queue that decides what runs.

A job is one queue item's processes: the steps of a clean/build/exec or of a compile-and-run `code`, or a start-up
item (language init, bootstrap.sh). BatchJobs runs at most one at a time, its steps one after another, each in its own
session; one ProcessWatcher per step streams both pipes (to the agent through the router's credits, or to the log)
and reports the exit::

    step spawned ──▶ exit + both pipes closed ──▶ next step | the job ended
         │  └─ exit, pipes idle for PIPE_GRACE_S ──▶ detach the pumps, go on
         └─ interrupt: SIGINT group ─2 s─▶ SIGTERM group ─2 s─▶ SIGKILL tree

The job ends once, after its last step, a step that failed or could not start, an interrupt, a stop or a timeout:
the owner hears `on_ended(job)` and answers the run (LangRunnerActor). Also here: the per-task log file, and the
output sink the pipe pumps call.
"""

from __future__ import annotations

import collections
import errno
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import attrs
import pykka

from kernel_runner.excerpts import excerpt
from kernel_runner.langs import ShellStep
from kernel_runner.messages import PipeClosed, ProcessExited, RunTask, StreamName
from kernel_runner.observability.debug_lines import debug
from kernel_runner.procs.childenv import MAX_ARG_STRLEN
from kernel_runner.procs.process import (
    ProcessHandle,
    ProcessWatcher,
    StopStep,
    describe_returncode,
    stop_process,
    term_then_kill,
    watch_process,
)
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.timers import TimerHandle
from kernel_runner.wire.answers import EXIT_NOT_RUN

if TYPE_CHECKING:
    from loguru import Logger

KERNEL_ID_VAR = "BACKENDAI_KERNEL_ID"
LOG_LINE_LIMIT = 64 * 1024
# After the main process exited, pipes that stay open *and idle* this long are held by a background
# grandchild: the op finishes without them (docs/protocol.md §10.3 #23). Pipes still being drained are waited for.
PIPE_GRACE_S = 0.25
# Output accepted after the exit before we conclude a grandchild keeps writing (a pipe buffer holds ≤ 1 MiB).
PIPE_DRAIN_LIMIT = 4 * 1024 * 1024
# Interrupt: SIGINT to the group, then SIGTERM if anything of it still lives after 2 s, then SIGKILL to the tree.
INTERRUPT_STEPS = (StopStep((signal.SIGINT,), 2.0), StopStep((signal.SIGTERM,), 2.0))
STOP_KILL_AFTER_S = 2.0  # a job over its time: SIGTERM, then SIGKILL

JobKind = Literal["clean", "build", "exec", "code", "init", "bootstrap"]


def task_log_path(work_dir: Path, kernel_id: str) -> Path:
    """docs/protocol.md §5.3: `<work>/.logs/task/<h0h1>/<h2h3>/<rest>.log` from the kernel id's 32-digit hex form."""
    digits = uuid.UUID(kernel_id).hex
    return work_dir / ".logs" / "task" / digits[0:2] / digits[2:4] / f"{digits[4:]}.log"


class TaskLog:
    """The per-task log file (docs/protocol.md §5.3): both streams appended, unmarked, as upstream did; writes never raise."""

    def __init__(self, path: Path, stream: IO[bytes]) -> None:
        self.path = path
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, work_dir: Path, env: Mapping[str, str], log: Logger) -> TaskLog | None:
        """None when `<work>/.logs` is not a folder; a missing or bad kernel id is logged, not fatal.

        See docs/protocol.md §10.3 #24.
        """
        if not (work_dir / ".logs").is_dir():
            return None
        kernel_id = env.get(KERNEL_ID_VAR)
        if not kernel_id:
            log.warning("{} is not set; the task log is not written", KERNEL_ID_VAR)
            return None
        try:
            path = task_log_path(work_dir, kernel_id)
        except ValueError:
            log.warning("{}={!r} is not a UUID; the task log is not written", KERNEL_ID_VAR, kernel_id)
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stream = path.open("ab")
        except OSError as exc:
            log.warning("cannot open the task log {}: {}", path, exc)
            return None
        return cls(path, stream)

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._stream.write(data)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._stream.close()
            except OSError:
                pass


class LineLogger:
    """Turns a process's output into runner log lines (start-up steps: their output is logged, not sent)."""

    def __init__(self, log: Logger, label: str) -> None:
        self._log = log
        self._label = label
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._lock = threading.Lock()

    def feed(self, stream: StreamName, data: bytes) -> None:
        with self._lock:
            *lines, rest = (self._partial[stream] + data).split(b"\n")
            if len(rest) > LOG_LINE_LIMIT:
                lines.append(rest)
                rest = b""
            self._partial[stream] = rest
        for line in lines:
            self._emit(stream, line)

    def flush(self) -> None:
        with self._lock:
            leftovers = [(name, rest) for name, rest in self._partial.items() if rest]
            self._partial = {"stdout": b"", "stderr": b""}
        for stream, rest in leftovers:
            self._emit(stream, rest)

    def _emit(self, stream: str, raw: bytes) -> None:
        self._log.bind(stream=stream).info("{} {}: {}", self._label, stream,
                                           raw.decode("utf-8", errors="replace").rstrip("\r"))


Deliver = Callable[[StreamName, bytes], None]


class StepSink:
    """What the two pipe pumps of one step call for each chunk: task log first, then the agent (or the log).

    `deliver` is the router's blocking, credit-taking send (the backpressure); it runs in the pump's thread.
    The sink also tells the actor whether output is still flowing after the process exited, which separates a
    pipe that is being drained (keep waiting, or output would be lost) from a pipe a background grandchild
    holds open without writing (stop waiting, docs/protocol.md §10.3 #23). Once detached, chunks no longer reach the agent:
    the op has finished, and they would be attributed to the next run.
    """

    def __init__(
        self,
        *,
        deliver: Deliver | None,
        task_log: TaskLog | None,
        line_logger: LineLogger | None,
        log: Logger,
    ) -> None:
        self._deliver = deliver
        self._task_log = task_log
        self._line_logger = line_logger
        self._log = log
        self._lock = threading.Lock()
        self._busy = 0
        self._exited = False
        self._detached = False
        self.bytes_after_exit = 0
        self._chunks_since_check = 0

    def __call__(self, stream: StreamName, data: bytes) -> None:
        """Never raises: the pipe pump that calls it must go on reading, or the step's end would never be told."""
        with self._lock:
            detached = self._detached
            self._chunks_since_check += 1
            if self._exited:
                self.bytes_after_exit += len(data)
            if not detached:
                self._busy += 1
        try:
            if self._task_log is not None:
                self._task_log.write(data)
            if detached:
                if self._line_logger is not None:
                    self._line_logger.feed(stream, data)
            elif self._deliver is not None:
                self._deliver(stream, data)
            elif self._line_logger is not None:
                self._line_logger.feed(stream, data)
        except Exception as exc:  # noqa: BLE001 - one lost chunk is logged; a dead pump would hang the run
            self._log.opt(exception=exc).error(
                "{} chunk of {} bytes lost: {!r}; it starts {}", stream, len(data), exc, excerpt(data)
            )
        finally:
            if not detached:
                with self._lock:
                    self._busy -= 1

    def mark_exited(self) -> None:
        with self._lock:
            self._exited = True
            self._chunks_since_check = 0

    def still_flowing(self) -> bool:
        """True while a pump is delivering, or delivered since the last call (the pipe is being drained)."""
        with self._lock:
            flowing = self._busy > 0 or self._chunks_since_check > 0
            self._chunks_since_check = 0
            return flowing

    def detach(self) -> bool:
        """Stop sending to the agent; True when no chunk is in flight (so Finished cannot overtake one)."""
        with self._lock:
            self._detached = True
            return self._busy == 0

    def flush(self) -> None:
        if self._line_logger is not None:
            self._line_logger.flush()


# ---- batch jobs ------------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PipeGraceDue:
    pid: int


@attrs.frozen(kw_only=True)
class JobTimeoutDue:
    job_id: int


@attrs.frozen(kw_only=True)
class StepSpec:
    argv: tuple[str, ...]
    env_extra: Mapping[str, str] = attrs.field(factory=dict)


def shell_step(step: ShellStep) -> StepSpec:
    return StepSpec(argv=("/bin/sh", "-c", step.command), env_extra=step.env_extra)


@attrs.define(kw_only=True, eq=False)
class Step:
    handle: ProcessHandle
    sink: StepSink
    watcher: ProcessWatcher | None = None
    open_pipes: int = 2
    exit: ProcessExited | None = None


@attrs.define(kw_only=True, eq=False)
class Job:
    job_id: int
    kind: JobKind
    task: RunTask | None  # None: an internal start-up job (output logged, no Finished)
    steps: collections.deque[StepSpec]
    cleanup: tuple[Path, ...] = ()
    task_log: TaskLog | None = None
    step: Step | None = None
    exit_code: int = 0
    interrupted: bool = False  # by an interrupt, a stop or its timeout: no further step starts
    timeout_s: float | None = None
    timer: TimerHandle | None = None


class BatchJobs:
    """The current job and every process group it spawned; one "job ended" per job, told to `on_ended`.

    Its methods run in the owning actor's thread, which hands it the messages its watchers and timers send.
    """

    def __init__(
        self,
        *,
        owner: pykka.ActorRef[Any],
        clock: Clock,
        log: Logger,
        work_dir: Path,
        env: Mapping[str, str],
        deliver: Deliver,
        notice: Callable[[str], None],
        schedule: Callable[[float, object], TimerHandle],
        on_ended: Callable[[Job], None],
    ) -> None:
        self._owner = owner
        self._clock = clock
        self.log = log
        self._work_dir = work_dir
        self._env = env
        self._deliver = deliver
        self._notice = notice
        self.schedule = schedule
        self._on_ended = on_ended
        self.current: Job | None = None  # a run's job (RUNNING_JOB) or a start-up item's (STARTING)
        self._job_ids = 0
        self._groups: dict[int, ProcessHandle] = {}  # every spawned group that may still have members
        self._lingering: dict[int, Step] = {}  # finished steps whose pipes a grandchild still holds

    def start(self, kind: JobKind, task: RunTask | None, steps: list[StepSpec], *, cleanup: tuple[Path, ...] = (),
              timeout_s: float | None = None) -> Job:
        """The job's first step starts now; one that cannot start ends the job before this returns."""
        self._job_ids += 1
        job = Job(job_id=self._job_ids, kind=kind, task=task, steps=collections.deque(steps), cleanup=cleanup,
                  timeout_s=timeout_s)
        job.task_log = TaskLog.open(self._work_dir, self._env, self.log)
        self.current = job
        self._spawn_next_step(job)
        if timeout_s is not None and self.current is job:
            job.timer = self.schedule(timeout_s, JobTimeoutDue(job_id=job.job_id))
        return job

    def handle(self, message: PipeGraceDue | JobTimeoutDue | ProcessExited | PipeClosed) -> bool:
        """True when a step is done (the job went on to its next step, or ended): the owner looks at its queue."""
        match message:
            case ProcessExited():
                return self._handle_process_exited(message)
            case PipeClosed():
                return self._handle_pipe_closed(message)
            case PipeGraceDue():
                return self._handle_pipe_grace_due(message)
            case JobTimeoutDue():
                self._handle_job_timeout_due(message)
        return False

    def _spawn_next_step(self, job: Job) -> None:
        step_spec = job.steps.popleft()
        env = {**self._env, **step_spec.env_extra}
        try:
            handle = ProcessHandle.spawn(
                step_spec.argv,
                env=env,
                cwd=self._work_dir,
                # docs/protocol.md §10.3 #25: never the runner's stdin; input goes through the user-input socket.
                stdin=subprocess.DEVNULL,
            )
        except Exception as exc:  # noqa: BLE001 - docs/protocol.md §5.1: a step that cannot start ends its run, not us
            text = spawn_failure_text(step_spec.argv, env, exc)
            if job.task is not None:
                self._notice(f"kernel-runner: the {job.kind} command could not start: {text}\n")
            self.log.error("{} job: the command could not start: {}", job.kind, text)
            job.exit_code = EXIT_NOT_RUN
            self._end_job(job)
            return
        internal = job.task is None
        sink = StepSink(
            deliver=None if internal else self._deliver,
            task_log=job.task_log,
            line_logger=LineLogger(self.log, job.kind) if internal else None,
            log=self.log,
        )
        step = Step(handle=handle, sink=sink)
        job.step = step
        self._groups[handle.pid] = handle
        debug(self.log, "spawned pid={} for {} job: {}", handle.pid, job.kind, excerpt(" ".join(step_spec.argv)))
        step.watcher = watch_process(handle, self._owner, sink=sink, clock=self._clock)

    def _current_step(self, pid: int) -> tuple[Job, Step] | None:
        job = self.current
        if job is not None and job.step is not None and job.step.handle.pid == pid:
            return job, job.step
        return None

    def _handle_process_exited(self, message: ProcessExited) -> bool:
        found = self._current_step(message.pid)
        if found is None:
            debug(self.log, "exit of pid {} after its op ended", message.pid)
            return False
        job, step = found
        step.exit = message
        step.sink.mark_exited()
        if step.open_pipes == 0:
            self._step_done(job, step)
            return True
        self.schedule(PIPE_GRACE_S, PipeGraceDue(pid=message.pid))
        return False

    def _handle_pipe_closed(self, message: PipeClosed) -> bool:
        found = self._current_step(message.pid)
        if found is None:
            lingering = self._lingering.get(message.pid)
            if lingering is not None:
                lingering.open_pipes -= 1
                if lingering.open_pipes <= 0:
                    del self._lingering[message.pid]
                    lingering.sink.flush()
                    self._forget_group_if_gone(lingering.handle)
            return False
        job, step = found
        step.open_pipes -= 1
        if step.open_pipes == 0 and step.exit is not None:
            self._step_done(job, step)
            return True
        return False

    def _handle_pipe_grace_due(self, message: PipeGraceDue) -> bool:
        found = self._current_step(message.pid)
        if found is None:
            return False
        job, step = found
        if step.open_pipes == 0:
            return False
        sink = step.sink
        if sink.bytes_after_exit <= PIPE_DRAIN_LIMIT and sink.still_flowing():
            self.schedule(PIPE_GRACE_S, message)  # still draining what the process wrote: keep every byte
            return False
        if not sink.detach():
            self.schedule(PIPE_GRACE_S / 5, message)  # a chunk is on its way to the agent; Finished goes after it
            return False
        self.log.info(
            "pid {} exited but a background process keeps its output open; {} op finishes without it",
            message.pid,
            job.kind,
        )
        self._lingering[message.pid] = step
        self._step_done(job, step)
        return True

    def _step_done(self, job: Job, step: Step) -> None:
        assert step.exit is not None
        job.step = None
        code, sig = describe_returncode(step.exit.returncode)
        if step.open_pipes == 0:
            step.sink.flush()
            self._forget_group_if_gone(step.handle)
        job.exit_code = code
        how = f"signal {sig}" if sig is not None else f"code {code}"
        debug(self.log, "pid {} ({} job) exited with {}", step.handle.pid, job.kind, how)
        if job.interrupted or code != 0 or not job.steps:  # a stop marks the job interrupted too
            self._end_job(job)
        else:
            self._spawn_next_step(job)

    def _end_job(self, job: Job) -> None:
        """The job's last step is done (or could not start): its one "job ended"."""
        if job.timer is not None:
            job.timer.cancel()
        remove_paths(job.cleanup, self.log)
        if job.task_log is not None:
            job.task_log.close()
        if self.current is job:
            self.current = None
        self._on_ended(job)

    def _forget_group_if_gone(self, handle: ProcessHandle) -> None:
        if not handle.group_alive():
            self._groups.pop(handle.pid, None)

    # ---- what the owner asks ------------------------------------------------------------------------------------------
    def interrupt(self) -> bool:
        """Interrupt a run's job (True); a start-up job or none at all is the owner's to explain (False)."""
        job = self.current
        if job is None or job.task is None:
            return False
        if job.step is not None:
            # The whole process group, not only `sh`, so the command really stops (docs/protocol.md §10.3 #22).
            self.log.info("interrupt: SIGINT to process group {}", job.step.handle.pid)
            if job.interrupted:
                job.step.handle.signal_group(signal.SIGINT)  # again, as a second ^C; the escalation runs already
            else:
                stop_process(job.step.handle, INTERRUPT_STEPS, log=self.log, what=f"the {job.kind} job")
        job.interrupted = True
        return True

    def _handle_job_timeout_due(self, message: JobTimeoutDue) -> None:
        job = self.current
        if job is None or job.job_id != message.job_id or job.step is None:
            return
        self.log.error("{} did not finish within {:.0f}s; stopping it", job.kind, job.timeout_s)
        job.interrupted = True
        stop_process(job.step.handle, term_then_kill(STOP_KILL_AFTER_S), log=self.log, what=f"the {job.kind} job")

    def running_step(self) -> Step | None:
        """The step a stop would wait for: spawned and not exited yet."""
        job = self.current
        if job is None or job.step is None or job.step.exit is not None:
            return None
        return job.step

    def stop(self, grace_s: float) -> None:
        """The owner stops: the running step gets SIGTERM to its group, then SIGKILL to its tree after `grace_s`."""
        job, step = self.current, self.running_step()
        assert job is not None and step is not None
        job.interrupted = True
        stop_process(step.handle, term_then_kill(grace_s), log=self.log, what=f"the {job.kind} job")

    def sync_output(self, token: int) -> bool:
        """True when the running step's watcher will send OutputSynced(token) once what it read is on its way."""
        step = self.current.step if self.current is not None else None
        return step is not None and step.watcher is not None and step.watcher.sync(token)

    def abandon(self) -> Job | None:
        """The owner ends: the current job is dropped (its task is the owner's to answer), its files removed."""
        job, self.current = self.current, None
        if job is not None:
            if job.timer is not None:
                job.timer.cancel()
            remove_paths(job.cleanup, self.log)
            if job.task_log is not None:
                job.task_log.close()
        return job

    def kill_all(self) -> None:
        for handle in list(self._groups.values()):
            if handle.group_alive():
                self.log.warning("killing the process tree of group {} on the way out", handle.pid)
                handle.kill_tree()
        self._groups.clear()


def remove_paths(paths: tuple[Path, ...], log: Logger) -> None:
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove {}: {}", path, exc)


def spawn_failure_text(argv: tuple[str, ...], env: Mapping[str, str], exc: Exception) -> str:
    """Why a step could not start, on one line, quoting only a prefix of the command (docs/protocol.md §5.1)."""
    command = argv[-1]
    if any("\0" in part for part in argv):
        return f"it contains a NUL byte, which no program can receive in an argument: {excerpt(command)}"
    if isinstance(exc, ValueError) and "null byte" in str(exc):
        names = sorted(key for key, value in env.items() if "\0" in key or "\0" in value)
        return f"the environment holds a NUL byte (in {', '.join(excerpt(name) for name in names) or 'a variable'})"
    if isinstance(exc, OSError) and exc.errno == errno.E2BIG:
        size = len(os.fsencode(command))
        if size + 1 > MAX_ARG_STRLEN:  # a longer `sh -c` command cannot be passed at all
            return (f"it is {size} bytes long, and Linux passes at most {MAX_ARG_STRLEN - 1} bytes in one argument "
                    f"(E2BIG); put it in a file and run that instead: {excerpt(command)}")
        return f"it ({size} bytes) and the environment together are too large for a new program (E2BIG): {excerpt(command)}"
    why = exc.strerror or str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
    return f"cannot run {argv[0]}: {excerpt(why, quote=False)}; the command: {excerpt(command)}"
