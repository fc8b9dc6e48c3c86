"""LangRunnerActor: the serial queue of clean/build/exec/code for the runner's language (docs/protocol.md §2.3, §5, §8).

One op runs at a time. Its processes run in their own session; one ProcessWatcher per process streams both pipes
to the agent through the router's credits (backpressure) and reports the exit. Inline ops (input,
interrupt, complete) are handled between those events, because no handler here ever waits.

Life of one incarnation: one `Phase`, changed only through `to_phase` (LIFECYCLE; docs/architecture.md §3.4)::

                                                               ┌──(`code` told to its delegate)──────────▶ DELEGATED
                                                               │ ┌──────────────────(RunDone)───────────────────┘
    STARTING ──(start-up items done: gate "bootstrap" done)──▶ IDLE ──(clean/build/exec, compile-and-run)──▶ RUNNING_JOB
    init, bootstrap.sh: one job at a time                        ▲                                                │
    (generation ≥ 2: none)                                       └────────────────(its job ended)─────────────────┘

    An item that ends at once (NoStep, a skipped exec, a step that cannot be spawned) leaves the phase IDLE (or
    STARTING), and the loop in `_run_next` takes the next one: nothing re-enters it.

    STARTING, RUNNING_JOB ──StopRequested, a step still runs──▶ STOPPING ──(the stopped job ended)──▶ ENDED
                                (stop_process: SIGTERM to the group, then SIGKILL to the tree)
    STARTING, IDLE, RUNNING_JOB, DELEGATED ──StopRequested, no step to wait for──▶ ENDED
    ──▶ ENDED also from any phase when the actor crashes or is stopped from outside (cleanup).

Queued runs start only in IDLE; start-up items only in STARTING, one job at a time. The current job, the delegated
run and the queue are data. Input and interrupt go to the delegate only in DELEGATED (a Jupyter language's completion
goes to the kernel in every phase). The supervisor sees RUNNING from STARTING on (the actor takes runs from its first
message, and the first `status` reply, released by STARTING -> IDLE, must already show it RUNNING), STOPPING in
STOPPING; the end itself is the ChildExited.

Life of one op::

    queued ──▶ planned (langs) ──▶ step spawned ──▶ exit + both pipes closed ──▶ next step | Finished
                  │                     │  └─ exit, pipes idle for PIPE_GRACE_S ──▶ detach the pumps, go on
                  │                     └─ interrupt: SIGINT group ─2 s─▶ SIGTERM group ─2 s─▶ SIGKILL tree
                  ├─ NoStep: optional stderr line, Finished(code)
                  └─ Jupyter / terminal / Polly `code`: told to the delegate, which reports RunDone; this actor sends Finished

Start-up (docs/protocol.md §1.6 B, §5.7): language init and `<work>/bootstrap.sh` run as the first internal jobs, their
output logged; then the start-up gate hears that "bootstrap" is done, which releases `status`.
"""

from __future__ import annotations

import collections
import enum
import errno
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs

from kernel_runner.actors.lang_runner.job import LineLogger, StepSink, TaskLog
from kernel_runner.actors.lang_runner.user_input import InputAbandoned, InputRequested, InputServerFailed, UserInputServer
from kernel_runner.context import RunnerContext
from kernel_runner.excerpts import excerpt
from kernel_runner.ids import KERNEL_CHILD, POLLY_CHILD, TERMINAL_CHILD, ChildId
from kernel_runner.langs import (
    POLLY_HANDLER,
    CompileAndRunQuery,
    ExternalQuery,
    JupyterQuery,
    LangContext,
    NoQuery,
    NoStep,
    ShellStep,
    TerminalQuery,
    get_lang,
    plan_batch,
    plan_init,
    plan_query,
    resolve_runtime,
)
from kernel_runner.messages import (
    CompleteCode,
    CompletionResult,
    FeedInput,
    Finished,
    InterruptRun,
    Output,
    OutputSynced,
    PipeClosed,
    ProcessExited,
    RunDone,
    RunTask,
    WaitingInput,
)
from kernel_runner.notices import notice_bytes
from kernel_runner.observability.debug_lines import debug, log_at
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
from kernel_runner.supervision.actor import Lifecycle, PhasedActor
from kernel_runner.supervision.exits import ShutdownExit
from kernel_runner.supervision.spec import ChildContext, ChildState, StopRequested
from kernel_runner.supervision.timers import TimerHandle
from kernel_runner.wire.answers import EXIT_NOT_RUN, untaken_run_answers

BOOTSTRAP_STEP = "bootstrap"  # the startup step the supervisor waits for before answering `status` (docs/protocol.md §1.6)
BOOTSTRAP_TIMEOUT_S = 600.0  # upstream waited for ever; a hung bootstrap.sh must not keep `status` unanswered
# After the main process exited, pipes that stay open *and idle* this long are held by a background
# grandchild: the op finishes without them (docs/protocol.md §10.3 #23). Pipes still being drained are waited for.
PIPE_GRACE_S = 0.25
# Output accepted after the exit before we conclude a grandchild keeps writing (a pipe buffer holds ≤ 1 MiB).
PIPE_DRAIN_LIMIT = 4 * 1024 * 1024
# Interrupt: SIGINT to the group, then SIGTERM if anything of it still lives after 2 s, then SIGKILL to the tree.
INTERRUPT_STEPS = (StopStep((signal.SIGINT,), 2.0), StopStep((signal.SIGTERM,), 2.0))
STOP_KILL_AFTER_S = 2.0  # bootstrap timeout: SIGTERM, then SIGKILL
EXIT_MACHINERY_FAILED = -1  # docs/protocol.md §5.1: the runner could not prepare the step (a query source)
UNSUPPORTED_INPUT = b"<user-input is unsupported>"  # docs/protocol.md §5.6, for languages without an input queue
INPUT_SERVER_RESTART_S = 1.0  # a user-input server whose thread died is replaced after this pause (no hot loop)

JobKind = Literal["clean", "build", "exec", "code", "init", "bootstrap"]


class Phase(enum.Enum):
    """Where one incarnation of the language runner is in its life (see the module docstring's diagram)."""

    STARTING = "starting"
    """Start-up items run one job at a time (language init, bootstrap.sh); queued runs wait for IDLE."""
    IDLE = "idle"
    """Nothing is current: the next queued run may start (the queue is empty whenever a handler sees IDLE)."""
    RUNNING_JOB = "running-job"
    """A run's job is current: a process step of clean/build/exec or of a compile-and-run `code`."""
    DELEGATED = "delegated"
    """A `code` run is with the kernel or the terminal; waiting for its RunDone. Input and interrupt go there."""
    STOPPING = "stopping"
    """A stop was requested while a step ran: the step is being stopped (stop_process); the actor ends after it."""
    ENDED = "ended"
    """The incarnation is over (finish called, or cleanup ran); nothing follows."""


LIFECYCLE = Lifecycle(
    initial=Phase.STARTING,
    transitions={
        Phase.STARTING: frozenset({Phase.IDLE, Phase.STOPPING, Phase.ENDED}),
        Phase.IDLE: frozenset({Phase.RUNNING_JOB, Phase.DELEGATED, Phase.ENDED}),
        Phase.RUNNING_JOB: frozenset({Phase.IDLE, Phase.STOPPING, Phase.ENDED}),
        Phase.DELEGATED: frozenset({Phase.IDLE, Phase.ENDED}),
        Phase.STOPPING: frozenset({Phase.ENDED}),
        Phase.ENDED: frozenset(),
    },
    # The supervisor's view of each phase; None: nothing to report (ENDED is reported by ChildExited).
    child_states={
        # Runs are taken (queued) from the first message on, so start-up already counts as RUNNING, as it always did.
        Phase.STARTING: ChildState.RUNNING,
        Phase.IDLE: ChildState.RUNNING,
        Phase.RUNNING_JOB: ChildState.RUNNING,
        Phase.DELEGATED: ChildState.RUNNING,
        Phase.STOPPING: ChildState.STOPPING,
        Phase.ENDED: None,
    },
)


# ---- messages private to this actor ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _PipeGraceDue:
    pid: int


@attrs.frozen(kw_only=True)
class _JobTimeoutDue:
    job_id: int


@attrs.frozen(kw_only=True)
class _InputServerRestartDue:
    pass


# ---- queue items and jobs -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Internal:
    """A start-up item: language init, or the bootstrap script. When none is left, STARTING ends."""

    kind: Literal["init", "bootstrap"]
    command: str = ""


@attrs.frozen(kw_only=True)
class _StepSpec:
    argv: tuple[str, ...]
    env_extra: Mapping[str, str] = attrs.field(factory=dict)


def _shell(step: ShellStep) -> _StepSpec:
    return _StepSpec(argv=("/bin/sh", "-c", step.command), env_extra=step.env_extra)


@attrs.define(kw_only=True, eq=False)
class _Step:
    handle: ProcessHandle
    sink: StepSink
    watcher: ProcessWatcher | None = None
    open_pipes: int = 2
    exit: ProcessExited | None = None


@attrs.define(kw_only=True, eq=False)
class _Job:
    job_id: int
    kind: JobKind
    task: RunTask | None  # None: an internal start-up job (output logged, no Finished)
    steps: collections.deque[_StepSpec]
    cleanup: tuple[Path, ...] = ()
    task_log: TaskLog | None = None
    step: _Step | None = None
    exit_code: int = 0
    interrupted: bool = False
    timer: TimerHandle | None = None


@attrs.frozen(kw_only=True)
class _Delegated:
    task: RunTask
    child_id: ChildId


class LangRunnerActor(PhasedActor[Phase]):
    """Runs queued tasks one at a time; inline ops (input, interrupt, complete) are answered while a task runs.

    The only sender of `finished`: its own runs end in `_finish_task`, delegated runs when the delegate reports
    RunDone, and runs it cannot take any more (it is stopping) through rejects.untaken_run_answers. Every RunTask
    gets exactly one, in order: runs start only in IDLE, so a run's Finished is sent before the next one starts.
    """

    redeliverable = (RunTask, CompleteCode)
    lifecycle = LIFECYCLE

    def __init__(self, *, ctx: ChildContext, runner: RunnerContext) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self._config = runner.config
        self._router = runner.router
        self.lang = runner.config.lang
        self.spec = get_lang(self.lang)
        self._env: dict[str, str] = dict(runner.env) if runner.env else dict(os.environ)
        self._lctx = LangContext(
            runtime_path=None, work_dir=self._config.work_dir, env=self._env,
            input_socket=self._config.user_input_socket,
        )
        self._startup: collections.deque[_Internal] = collections.deque()  # STARTING's items
        self._queue: collections.deque[RunTask] = collections.deque()  # runs; they start in IDLE
        self._job: _Job | None = None  # the current job: a run's (RUNNING_JOB) or a start-up item's (STARTING)
        self._delegated: _Delegated | None = None  # the run with the delegate: kernel, terminal or Polly (DELEGATED)
        self._job_ids = 0
        self._build_ok: bool | None = None  # docs/protocol.md §5.2: None = no build recorded
        self._input_server: UserInputServer | None = None
        self._input_waiters: collections.deque[int] = collections.deque()
        self._groups: dict[int, ProcessHandle] = {}  # every spawned group that may still have members
        self._lingering: dict[int, _Step] = {}  # finished steps whose pipes a grandchild still holds

    @property
    def _delegated_now(self) -> _Delegated | None:
        """The run the delegate (kernel, terminal, Polly) has, while that is what this actor waits for (DELEGATED)."""
        return self._delegated if self.phase is Phase.DELEGATED else None

    def _shut_down(self, why: str) -> None:
        self.to_phase(Phase.ENDED, why)
        self.finish(ShutdownExit())

    # ---- life ---------------------------------------------------------------------------------------
    def start_child(self) -> None:
        config = self._config
        runtime = resolve_runtime(self.spec, config.runtime_path)
        self._lctx = attrs.evolve(self._lctx, runtime_path=runtime)
        self._start_input_server()
        # No edge is taken here, but STARTING already counts as RUNNING (LIFECYCLE): tell the supervisor now.
        self.report_phase()
        self.update_info({"lang": self.lang, "runtime_path": runtime})
        self.log.info("language {} (runtime {}), work dir {}", self.lang, runtime, config.work_dir)
        if self.generation == 1:
            for step in plan_init(self.spec):
                self._startup.append(_Internal(kind="init", command=step.command))
            self._startup.append(_Internal(kind="bootstrap"))
        else:
            # Start-up steps ran in the first incarnation; a restarted runner must not repeat them.
            self.log.info("restarted (generation {}); language init and bootstrap.sh are not run again", self.generation)
        self._run_next()

    def _start_input_server(self) -> None:
        server = UserInputServer(self._config.user_input_socket, self.actor_ref)
        try:
            server.bind()
        except OSError as exc:
            # docs/protocol.md §10.2 #12: guard every start-up step; batch input is then unavailable, the rest works.
            self.log.error("user-input socket {} unavailable: {}", server.path, exc)
            server.stop()
            return
        server.start()
        self._input_server = server

    def cleanup(self) -> None:
        if self.phase is not Phase.ENDED:
            self.to_phase(Phase.ENDED, "cleanup")  # any phase -> ENDED: crashed, or stopped from outside
        if self._input_server is not None:
            self._input_server.stop()
            self._input_server = None
        job = self._job
        self._job = None
        if job is not None:
            if job.timer is not None:
                job.timer.cancel()
            if job.task is not None:
                self._answer_stopped(job.task)
            self._remove_paths(job.cleanup)
            if job.task_log is not None:
                job.task_log.close()
        if self._delegated is not None:
            self._answer_stopped(self._delegated.task)
            self._delegated = None
        while self._queue:  # the next incarnation runs them; a runner that is gone answers them
            self.ctx.directory.hand_back(self.child_id, self.generation, self._queue.popleft())
        for handle in list(self._groups.values()):
            if handle.group_alive():
                self.log.warning("killing the process tree of group {} on the way out", handle.pid)
                handle.kill_tree()
        self._groups.clear()

    def _answer_stopped(self, task: RunTask) -> None:
        # The agent must get its one Finished even when this runner goes away mid-queue (docs/protocol.md §3.6 rule 2).
        for reply in untaken_run_answers(task, "the language runner is not available"):
            self._router.tell(reply)

    def request_stop(self, message: StopRequested) -> None:
        if self.phase is Phase.STOPPING:
            self.log.info("stop requested again ({}); the stop under way goes on", message.reason)
            return
        job = self._job
        if job is None or job.step is None or job.step.exit is not None:
            # STARTING / IDLE / RUNNING_JOB / DELEGATED -> ENDED; cleanup answers the current run, if any.
            self._shut_down(f"stop requested ({message.reason}); no step to wait for")
            return
        job.interrupted = True
        pid = job.step.handle.pid
        # The supervisor's `stopping` event says that it stops and why (logged once); this line says how.
        self.log.info("the {} job: SIGTERM to group {}; SIGKILL to its tree after {:.1f}s", job.kind, pid,
                      message.grace_s)
        self.to_phase(Phase.STOPPING, message.reason)  # STARTING / RUNNING_JOB -> STOPPING
        stop_process(job.step.handle, term_then_kill(message.grace_s), log=self.log, what=f"the {job.kind} job")

    # ---- dispatch ----------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        match message:
            case RunTask():
                return self._handle_run_task(message)
            case ProcessExited():
                return self._handle_process_exited(message)
            case PipeClosed():
                return self._handle_pipe_closed(message)
            case _PipeGraceDue():
                return self._handle_pipe_grace_due(message)
            case FeedInput():
                return self._handle_feed_input(message)
            case InputRequested():
                return self._handle_input_requested(message)
            case InputAbandoned():
                return self._handle_input_abandoned(message)
            case InputServerFailed():
                return self._handle_input_server_failed(message)
            case _InputServerRestartDue():
                return self._handle_input_server_restart_due()
            case OutputSynced():
                return self._handle_output_synced(message)
            case InterruptRun():
                return self._handle_interrupt_run(message)
            case CompleteCode():
                return self._handle_complete_code(message)
            case RunDone():
                return self._handle_run_done(message)
            case _JobTimeoutDue():
                return self._handle_job_timeout_due(message)
            case _:
                return super().handle(message)

    # ---- the queue ---------------------------------------------------------------------------------
    def _handle_run_task(self, task: RunTask) -> None:
        debug(self.log, "queued run {} {} ({} queued before it)", task.run_id, task.kind, len(self._queue))
        self._queue.append(task)
        self._run_next()

    def _run_next(self) -> None:
        """Start what the phase lets start. Handlers call it last, after whatever ended the current item.

        Nothing inside an item calls it: an item that ends at once leaves the phase IDLE (or STARTING with no job),
        and this loop looks again. Any other phase (a job or a delegated run is current, STOPPING, ENDED) waits.
        """
        while True:
            if self.phase is Phase.IDLE and self._queue:
                self._start_task(self._queue.popleft())
            elif self.phase is Phase.STARTING and self._job is None:
                self._next_startup_item()
            else:
                return

    def _next_startup_item(self) -> None:
        if self._startup:
            self._start_internal(self._startup.popleft())
            return
        self.log.info("start-up steps done")
        self._runner.gate.done(BOOTSTRAP_STEP)
        self.to_phase(Phase.IDLE, "start-up steps done")  # STARTING -> IDLE

    def _start_internal(self, item: _Internal) -> None:
        if item.kind == "init":
            self.log.info("language init: {}", item.command)
            self._start_job("init", None, [_shell(ShellStep(command=item.command))])
            return
        script = self._config.work_dir / "bootstrap.sh"
        if not script.is_file():
            debug(self.log, "no {}; nothing to bootstrap", script)
            return
        self.log.info("running {} (output goes to this log; timeout {:.0f}s)", script, BOOTSTRAP_TIMEOUT_S)
        job = self._start_job("bootstrap", None, [_StepSpec(argv=("/bin/sh", str(script)))])
        if job is not None and self._job is job:
            job.timer = self.schedule(BOOTSTRAP_TIMEOUT_S, _JobTimeoutDue(job_id=job.job_id))

    def _start_task(self, task: RunTask) -> None:
        if task.kind == "code":
            self._start_query(task)
            return
        if task.kind == "exec" and self._build_ok is False:
            # docs/protocol.md §5.2: skip without running or output; the failure is consumed by this exec.
            self._build_ok = None
            self.log.info("run {}: exec skipped because the last build failed", task.run_id)
            self._finish_task(task, EXIT_NOT_RUN)
            return
        plan = plan_batch(self.spec, task.kind, task.text, self._lctx)
        if isinstance(plan, NoStep):
            self._answer_no_step(task, plan)
            return
        self._start_job(task.kind, task, [_shell(plan)])

    def _start_query(self, task: RunTask) -> None:
        query = self.spec.query
        match query:
            case JupyterQuery():
                self._delegate(task, KERNEL_CHILD)
            case TerminalQuery():
                self._delegate(task, TERMINAL_CHILD)
            case CompileAndRunQuery():
                self._start_compile_and_run(task)
            case NoQuery():
                self._answer_no_step(task, _not_available(query.reason))
            case ExternalQuery() if query.handler == POLLY_HANDLER:
                self._delegate(task, POLLY_CHILD)  # docs/protocol.md §8.5
            case ExternalQuery():
                reason = f"the {query.handler} query handler is not part of this runner"
                self._answer_no_step(task, _not_available(reason))

    def _start_compile_and_run(self, task: RunTask) -> None:
        try:
            tmp_dir = Path(tempfile.mkdtemp(prefix="kernel-runner-query-"))
        except OSError as exc:
            self._fail_task(task, f"cannot create a temporary folder: {exc}")
            return
        plan = plan_query(self.spec, task.text, self._lctx, tmp_dir)
        if isinstance(plan, NoStep):
            self._remove_paths((tmp_dir,))
            self._answer_no_step(task, plan)
            return
        cleanup = (*plan.cleanup, tmp_dir)
        try:
            for file in plan.files:
                file.path.parent.mkdir(parents=True, exist_ok=True)
                file.path.write_text(file.content, encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            self._remove_paths(cleanup)
            self._fail_task(task, f"cannot write the query source: {exc}")
            return
        self._start_job("code", task, [_shell(step) for step in plan.steps], cleanup=cleanup)

    def _delegate(self, task: RunTask, child_id: ChildId) -> None:
        debug(self.log, "run {}: code delegated to {}", task.run_id, child_id)
        self._delegated = _Delegated(task=task, child_id=child_id)
        self.to_phase(Phase.DELEGATED, f"run {task.run_id} to {child_id}")  # IDLE -> DELEGATED
        self.tell_child(child_id, task)

    def _handle_run_done(self, message: RunDone) -> None:
        current = self._delegated_now
        if current is None or current.task.run_id != message.run_id:
            debug(self.log, "RunDone for run {} which is not the current one; ignored", message.run_id)
            return
        debug(self.log, "run {}: {} finished it with exit code {}", message.run_id, current.child_id, message.exit_code)
        self._delegated = None
        self.to_phase(Phase.IDLE, f"run {message.run_id} done")  # DELEGATED -> IDLE
        if message.note:
            self._notice(message.note)
        self._finish_task(current.task, message.exit_code)
        self._run_next()

    def _answer_no_step(self, task: RunTask, plan: NoStep) -> None:
        if plan.log_text:
            log_at(self.log, plan.log_level, "run {} {}: {}", task.run_id, task.kind, plan.log_text)
        if plan.stderr_text:
            self._notice(plan.stderr_text)
        self._finish_task(task, plan.exit_code)

    def _fail_task(self, task: RunTask, text: str) -> None:
        self.log.error("run {} {}: {}", task.run_id, task.kind, text)
        self._notice(f"kernel-runner: {text}\n")
        self._finish_task(task, EXIT_MACHINERY_FAILED)

    def _notice(self, text: str) -> None:
        """The runner's own words to the user: one stderr record, bounded whatever it quotes (docs/protocol.md §2.5)."""
        self._router.tell(Output(stream="stderr", data=notice_bytes(text)))

    def _finish_task(self, task: RunTask, exit_code: int) -> None:
        if task.kind == "build":
            self._build_ok = exit_code == 0  # docs/protocol.md §5.1: an empty or skipped build counts as success
        debug(self.log, "run {} {} finished with exit code {}", task.run_id, task.kind, exit_code)
        self._router.tell(Finished(kind=task.kind, exit_code=exit_code))

    # ---- jobs and their processes ---------------------------------------------------------------------
    def _start_job(
        self, kind: JobKind, task: RunTask | None, steps: list[_StepSpec], *, cleanup: tuple[Path, ...] = ()
    ) -> _Job | None:
        self._job_ids += 1
        job = _Job(job_id=self._job_ids, kind=kind, task=task, steps=collections.deque(steps), cleanup=cleanup)
        job.task_log = TaskLog.open(self._config.work_dir, self._env, self.log)
        self._job = job
        if task is not None:
            self.to_phase(Phase.RUNNING_JOB, f"run {task.run_id} {kind}")  # IDLE -> RUNNING_JOB
        self._spawn_next_step(job)
        return job

    def _spawn_next_step(self, job: _Job) -> None:
        step_spec = job.steps.popleft()
        env = {**self._env, **step_spec.env_extra}
        try:
            handle = ProcessHandle.spawn(
                step_spec.argv,
                env=env,
                cwd=self._config.work_dir,
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
            deliver=None if internal else self._router.send_output,
            task_log=job.task_log,
            line_logger=LineLogger(self.log, job.kind) if internal else None,
            log=self.log,
        )
        step = _Step(handle=handle, sink=sink)
        job.step = step
        self._groups[handle.pid] = handle
        debug(self.log, "spawned pid={} for {} job: {}", handle.pid, job.kind, excerpt(" ".join(step_spec.argv)))
        step.watcher = watch_process(handle, self.actor_ref, sink=sink, clock=self.ctx.clock)

    def _current_step(self, pid: int) -> tuple[_Job, _Step] | None:
        job = self._job
        if job is not None and job.step is not None and job.step.handle.pid == pid:
            return job, job.step
        return None

    def _handle_process_exited(self, message: ProcessExited) -> None:
        found = self._current_step(message.pid)
        if found is None:
            debug(self.log, "exit of pid {} after its op ended", message.pid)
            return
        job, step = found
        step.exit = message
        step.sink.mark_exited()
        if step.open_pipes == 0:
            self._step_done(job, step)
            self._run_next()
        else:
            self.schedule(PIPE_GRACE_S, _PipeGraceDue(pid=message.pid))

    def _handle_pipe_closed(self, message: PipeClosed) -> None:
        found = self._current_step(message.pid)
        if found is None:
            lingering = self._lingering.get(message.pid)
            if lingering is not None:
                lingering.open_pipes -= 1
                if lingering.open_pipes <= 0:
                    del self._lingering[message.pid]
                    lingering.sink.flush()
                    self._forget_group_if_gone(lingering.handle)
            return
        job, step = found
        step.open_pipes -= 1
        if step.open_pipes == 0 and step.exit is not None:
            self._step_done(job, step)
            self._run_next()

    def _handle_pipe_grace_due(self, message: _PipeGraceDue) -> None:
        found = self._current_step(message.pid)
        if found is None:
            return
        job, step = found
        if step.open_pipes == 0:
            return
        sink = step.sink
        if sink.bytes_after_exit <= PIPE_DRAIN_LIMIT and sink.still_flowing():
            self.schedule(PIPE_GRACE_S, message)  # still draining what the process wrote: keep every byte
            return
        if not sink.detach():
            self.schedule(PIPE_GRACE_S / 5, message)  # a chunk is on its way to the agent; Finished goes after it
            return
        self.log.info(
            "pid {} exited but a background process keeps its output open; {} op finishes without it",
            message.pid,
            job.kind,
        )
        self._lingering[message.pid] = step
        self._step_done(job, step)
        self._run_next()

    def _step_done(self, job: _Job, step: _Step) -> None:
        assert step.exit is not None
        job.step = None
        code, sig = describe_returncode(step.exit.returncode)
        if step.open_pipes == 0:
            step.sink.flush()
            self._forget_group_if_gone(step.handle)
        job.exit_code = code
        how = f"signal {sig}" if sig is not None else f"code {code}"
        debug(self.log, "pid {} ({} job) exited with {}", step.handle.pid, job.kind, how)
        if job.interrupted or code != 0 or not job.steps or self.phase is Phase.STOPPING:
            self._end_job(job)
        else:
            self._spawn_next_step(job)

    def _end_job(self, job: _Job) -> None:
        """The job's last step is done (or could not start): its one Finished; the caller's handler runs `_run_next`."""
        if job.timer is not None:
            job.timer.cancel()
        self._remove_paths(job.cleanup)
        if job.task_log is not None:
            job.task_log.close()
        if self._job is job:
            self._job = None
        if job.task is not None:
            self._finish_task(job.task, job.exit_code)
        else:
            level = "INFO" if job.exit_code == 0 else "WARNING"
            self.log.log(level, "{} job finished with exit code {}", job.kind, job.exit_code)
        if self.phase is Phase.STOPPING:
            self._shut_down(f"the stopped {job.kind} job ended")  # STOPPING -> ENDED
        elif job.task is not None:
            self.to_phase(Phase.IDLE, f"run {job.task.run_id} {job.kind} ended")  # RUNNING_JOB -> IDLE
        # A start-up job leaves the phase STARTING; `_run_next` starts the next start-up item.

    def _forget_group_if_gone(self, handle: ProcessHandle) -> None:
        if not handle.group_alive():
            self._groups.pop(handle.pid, None)

    def _remove_paths(self, paths: tuple[Path, ...]) -> None:
        for path in paths:
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                self.log.warning("cannot remove {}: {}", path, exc)

    # ---- interrupt --------------------------------------------------------------------------------------
    def _handle_interrupt_run(self, message: InterruptRun) -> None:
        job = self._job
        if job is not None and job.task is not None:
            if job.step is not None:
                # The whole process group, not only `sh`, so the command really stops (docs/protocol.md §10.3 #22).
                self.log.info("interrupt: SIGINT to process group {}", job.step.handle.pid)
                if job.interrupted:
                    job.step.handle.signal_group(signal.SIGINT)  # again, as a second ^C; the escalation runs already
                else:
                    stop_process(job.step.handle, INTERRUPT_STEPS, log=self.log, what=f"the {job.kind} job")
            job.interrupted = True
            return
        delegated = self._delegated_now
        if delegated is not None:
            self.tell_child(delegated.child_id, message)
            return
        if job is not None:
            self.log.info("interrupt ignored: the start-up step {} is running", job.kind)
            return
        self.log.info("interrupt: nothing is running")

    def _handle_job_timeout_due(self, message: _JobTimeoutDue) -> None:
        job = self._job
        if job is None or job.job_id != message.job_id or job.step is None:
            return
        self.log.error("{} did not finish within {:.0f}s; stopping it", job.kind, BOOTSTRAP_TIMEOUT_S)
        job.interrupted = True
        stop_process(job.step.handle, term_then_kill(STOP_KILL_AFTER_S), log=self.log, what=f"the {job.kind} job")

    # ---- input and completion -------------------------------------------------------------------------
    def _handle_input_requested(self, message: InputRequested) -> None:
        if not self.spec.input_queue or self._input_server is None:
            self.log.info("a process asked for user input; {} has no input support", self.lang)
            if self._input_server is not None:
                self._input_server.answer(message.conn_id, UNSUPPORTED_INPUT)
            return
        self._input_waiters.append(message.conn_id)
        if len(self._input_waiters) == 1:
            self._ask_agent_for_input()

    def _ask_agent_for_input(self) -> None:
        """After the output the process wrote before it asked (its prompt): the watcher syncs first."""
        step = self._job.step if self._job is not None else None
        if step is not None and step.watcher is not None and step.watcher.sync(self._input_waiters[0]):
            return  # OutputSynced comes back once the prompt is on its way
        self._send_waiting_input()

    def _handle_output_synced(self, message: OutputSynced) -> None:
        if self._input_waiters and self._input_waiters[0] == message.token:
            self._send_waiting_input()

    def _send_waiting_input(self) -> None:
        self.log.info("a process waits for user input")
        # Batch mode sends JSON too (docs/protocol.md §10.1 #7); a socket client cannot say whether it wants a password.
        self._router.tell(WaitingInput(is_password=False))

    def _handle_input_abandoned(self, message: InputAbandoned) -> None:
        if message.conn_id not in self._input_waiters:
            return
        was_head = self._input_waiters[0] == message.conn_id
        self._input_waiters.remove(message.conn_id)
        self.log.info("the process waiting for input went away before getting it")
        if was_head and self._input_waiters:
            self._ask_agent_for_input()

    def _handle_input_server_failed(self, message: InputServerFailed) -> None:
        server = self._input_server
        if server is None or server.server_id != message.server_id:
            return
        # Its thread closed every connection; the processes that waited get <user-input-unavailable> (§5.6).
        self.log.error("the user-input server died ({}); a new one starts in {:g}s", message.error, INPUT_SERVER_RESTART_S)
        self._input_server = None
        self._input_waiters.clear()
        self.schedule(INPUT_SERVER_RESTART_S, _InputServerRestartDue())

    def _handle_input_server_restart_due(self) -> None:
        if self._input_server is None and self.phase not in (Phase.STOPPING, Phase.ENDED):
            self._start_input_server()

    def _handle_feed_input(self, message: FeedInput) -> None:
        if self._input_waiters and self._input_server is not None:
            conn_id = self._input_waiters.popleft()
            self._input_server.answer(conn_id, message.text.encode("utf-8", errors="surrogateescape"))
            if self._input_waiters:
                self._ask_agent_for_input()
            return
        delegated = self._delegated_now
        if delegated is not None:
            self.tell_child(delegated.child_id, message)
            return
        # docs/protocol.md §10.3 #30: upstream queued it and answered a later prompt with it; we drop it.
        self.log.info("input dropped: nothing is waiting for input")

    def _handle_complete_code(self, message: CompleteCode) -> None:
        if isinstance(self.spec.query, JupyterQuery):
            self.tell_child(KERNEL_CHILD, message)
            return
        # docs/protocol.md §10.1 #1: always answer, or the agent waits for ever.
        self._router.tell(CompletionResult(items=()))


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


def _not_available(reason: str) -> NoStep:
    text = f"query mode is not available: {reason}"
    return NoStep(exit_code=EXIT_NOT_RUN, stderr_text=text + "\n", log_text=text, log_level="WARNING")


__all__ = ["BOOTSTRAP_STEP", "LIFECYCLE", "LangRunnerActor", "Phase"]
