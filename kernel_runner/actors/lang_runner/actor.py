"""LangRunnerActor: the serial queue of clean/build/exec/code for the runner's language (docs/protocol.md §2.3, §5, §8).

One op runs at a time. Its processes are a batch job (job.py: BatchJobs runs the steps, watches the exits and the
pipes, and says once when the job ended); this actor owns the queue, the start-up, the delegated runs, the input
server and the answers. Inline ops (input, interrupt, complete) are handled between those events, because no
handler here ever waits.

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

    queued ──▶ planned (langs) ──▶ a batch job (job.py: steps, pipes, interrupt) ──▶ the job ended ──▶ Finished
                  ├─ NoStep: optional stderr line, Finished(code)
                  └─ Jupyter / terminal / Polly `code`: told to the delegate, which reports RunDone; this actor sends Finished

Start-up (docs/protocol.md §1.6 B, §5.7): language init and `<work>/bootstrap.sh` run as the first internal jobs, their
output logged; then the start-up gate hears that "bootstrap" is done, which releases `status`.
"""

from __future__ import annotations

import collections
import enum
import os
import tempfile
from pathlib import Path
from typing import Literal

import attrs

from kernel_runner.actors.lang_runner.job import (
    BatchJobs,
    Job,
    JobKind,
    JobTimeoutDue,
    PipeGraceDue,
    StepSpec,
    remove_paths,
    shell_step,
)
from kernel_runner.actors.lang_runner.user_input import InputAbandoned, InputRequested, InputServerFailed, UserInputServer
from kernel_runner.context import RunnerContext
from kernel_runner.ids import ChildId
from kernel_runner.langs import (
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
    FeedInput,
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
from kernel_runner.supervision.actor import Lifecycle, PhasedActor
from kernel_runner.supervision.exits import ShutdownExit
from kernel_runner.supervision.spec import ChildContext, ChildState, StopRequested
from kernel_runner.wire.answers import EXIT_NOT_RUN, LANG_RUNNER_GONE

BOOTSTRAP_STEP = "bootstrap"  # the startup step the supervisor waits for before answering `status` (docs/protocol.md §1.6)
BOOTSTRAP_TIMEOUT_S = 600.0  # upstream waited for ever; a hung bootstrap.sh must not keep `status` unanswered
EXIT_MACHINERY_FAILED = -1  # docs/protocol.md §5.1: the runner could not prepare the step (a query source)
UNSUPPORTED_INPUT = b"<user-input is unsupported>"  # docs/protocol.md §5.6, for languages without an input queue
INPUT_SERVER_RESTART_S = 1.0  # a user-input server whose thread died is replaced after this pause (no hot loop)


@attrs.frozen(kw_only=True)
class LangRunnerSettings:
    """Where this language's `code` and `complete` go (runtime/tree.py decides, from the language's query mode).

    `delegate`: the child that runs `code` (the Jupyter kernel, the terminal, Polly); None: this actor runs it
    (compile-and-run) or answers that it cannot. `completer`: the child that answers `complete`; None: no matches.
    """

    delegate: ChildId | None = None
    completer: ChildId | None = None


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
class _InputServerRestartDue:
    pass


# ---- queue items ----------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Internal:
    """A start-up item: language init, or the bootstrap script. When none is left, STARTING ends."""

    kind: Literal["init", "bootstrap"]
    command: str = ""


@attrs.frozen(kw_only=True)
class _Delegated:
    task: RunTask
    child_id: ChildId


class LangRunnerActor(PhasedActor[Phase]):
    """Runs queued tasks one at a time; inline ops (input, interrupt, complete) are answered while a task runs.

    The only sender of `finished`, through each run's answer (wire/answers.py): its own runs end in `_finish_task`,
    delegated runs when the delegate reports RunDone, and a run it cannot finish any more (it is stopping) is refused.
    Every RunTask gets exactly one, in order: runs start only in IDLE, so a run's Finished is sent before the next one
    starts.
    """

    redeliverable = (RunTask, CompleteCode)
    lifecycle = LIFECYCLE

    def __init__(self, *, ctx: ChildContext, runner: RunnerContext, settings: LangRunnerSettings) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self._settings = settings
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
        self._jobs = BatchJobs(
            owner=self.actor_ref, clock=ctx.clock, log=self.log, work_dir=self._config.work_dir, env=self._env,
            deliver=self._router.send_output, notice=self._notice, schedule=self.schedule, on_ended=self._job_ended)
        self._delegated: _Delegated | None = None  # the run with the delegate: kernel, terminal or Polly (DELEGATED)
        self._build_ok: bool | None = None  # docs/protocol.md §5.2: None = no build recorded
        self._input_server: UserInputServer | None = None
        self._input_waiters: collections.deque[int] = collections.deque()

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
        job = self._jobs.abandon()
        if job is not None and job.task is not None:
            self._answer_stopped(job.task)
        if self._delegated is not None:
            self._answer_stopped(self._delegated.task)
            self._delegated = None
        while self._queue:  # the next incarnation runs them; a runner that is gone answers them
            self.ctx.directory.hand_back(self.child_id, self.generation, self._queue.popleft())
        self._jobs.kill_all()

    def _answer_stopped(self, task: RunTask) -> None:
        # The agent must get its one Finished even when this runner goes away mid-queue (docs/protocol.md §3.6 rule 2).
        task.answer.refuse(LANG_RUNNER_GONE)

    def request_stop(self, message: StopRequested) -> None:
        if self.phase is Phase.STOPPING:
            self.log.info("stop requested again ({}); the stop under way goes on", message.reason)
            return
        job, step = self._jobs.current, self._jobs.running_step()
        if job is None or step is None:
            # STARTING / IDLE / RUNNING_JOB / DELEGATED -> ENDED; cleanup answers the current run, if any.
            self._shut_down(f"stop requested ({message.reason}); no step to wait for")
            return
        # The supervisor's `stopping` event says that it stops and why (logged once); this line says how.
        self.log.info("the {} job: SIGTERM to group {}; SIGKILL to its tree after {:.1f}s", job.kind, step.handle.pid,
                      message.grace_s)
        self.to_phase(Phase.STOPPING, message.reason)  # STARTING / RUNNING_JOB -> STOPPING
        self._jobs.stop(message.grace_s)

    # ---- dispatch ----------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        match message:
            case RunTask():
                return self._handle_run_task(message)
            case ProcessExited() | PipeClosed() | PipeGraceDue() | JobTimeoutDue():
                if self._jobs.handle(message):  # a step is done: the job went on, or ended
                    self._run_next()
                return None
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
            elif self.phase is Phase.STARTING and self._jobs.current is None:
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
            self._start_job("init", None, [shell_step(ShellStep(command=item.command))])
            return
        script = self._config.work_dir / "bootstrap.sh"
        if not script.is_file():
            debug(self.log, "no {}; nothing to bootstrap", script)
            return
        self.log.info("running {} (output goes to this log; timeout {:.0f}s)", script, BOOTSTRAP_TIMEOUT_S)
        self._start_job("bootstrap", None, [StepSpec(argv=("/bin/sh", str(script)))], timeout_s=BOOTSTRAP_TIMEOUT_S)

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
        self._start_job(task.kind, task, [shell_step(plan)])

    def _start_query(self, task: RunTask) -> None:
        query = self.spec.query
        if self._settings.delegate is not None:
            self._delegate(task, self._settings.delegate)
            return
        match query:
            case CompileAndRunQuery():
                self._start_compile_and_run(task)
            case NoQuery():
                self._answer_no_step(task, _not_available(query.reason))
            case ExternalQuery():
                reason = f"the {query.handler} query handler is not part of this runner"
                self._answer_no_step(task, _not_available(reason))
            case JupyterQuery() | TerminalQuery():
                self._answer_no_step(task, _not_available("this runner has no query delegate"))

    def _start_compile_and_run(self, task: RunTask) -> None:
        try:
            tmp_dir = Path(tempfile.mkdtemp(prefix="kernel-runner-query-"))
        except OSError as exc:
            self._fail_task(task, f"cannot create a temporary folder: {exc}")
            return
        plan = plan_query(self.spec, task.text, self._lctx, tmp_dir)
        if isinstance(plan, NoStep):
            remove_paths((tmp_dir,), self.log)
            self._answer_no_step(task, plan)
            return
        cleanup = (*plan.cleanup, tmp_dir)
        try:
            for file in plan.files:
                file.path.parent.mkdir(parents=True, exist_ok=True)
                file.path.write_text(file.content, encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            remove_paths(cleanup, self.log)
            self._fail_task(task, f"cannot write the query source: {exc}")
            return
        self._start_job("code", task, [shell_step(step) for step in plan.steps], cleanup=cleanup)

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
        task.answer.send(exit_code)

    # ---- jobs ---------------------------------------------------------------------------------------------
    def _start_job(self, kind: JobKind, task: RunTask | None, steps: list[StepSpec], *, cleanup: tuple[Path, ...] = (),
                   timeout_s: float | None = None) -> None:
        if task is not None:
            self.to_phase(Phase.RUNNING_JOB, f"run {task.run_id} {kind}")  # IDLE -> RUNNING_JOB
        self._jobs.start(kind, task, steps, cleanup=cleanup, timeout_s=timeout_s)

    def _job_ended(self, job: Job) -> None:
        """The job's one end (its last step done, or one that could not start): its one Finished; the handler that
        ended it runs `_run_next`."""
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

    # ---- interrupt --------------------------------------------------------------------------------------
    def _handle_interrupt_run(self, message: InterruptRun) -> None:
        if self._jobs.interrupt():  # a run's job: its process group is interrupted
            return
        delegated = self._delegated_now
        if delegated is not None:
            self.tell_child(delegated.child_id, message)
            return
        if self._jobs.current is not None:
            self.log.info("interrupt ignored: the start-up step {} is running", self._jobs.current.kind)
            return
        self.log.info("interrupt: nothing is running")

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
        if self._jobs.sync_output(self._input_waiters[0]):
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
        if self._settings.completer is not None:
            self.tell_child(self._settings.completer, message)
            return
        # docs/protocol.md §10.1 #1: always answer, or the agent waits for ever.
        message.answer.send(())


def _not_available(reason: str) -> NoStep:
    text = f"query mode is not available: {reason}"
    return NoStep(exit_code=EXIT_NOT_RUN, stderr_text=text + "\n", log_text=text, log_level="WARNING")


__all__ = ["BOOTSTRAP_STEP", "LIFECYCLE", "LangRunnerActor", "LangRunnerSettings", "Phase"]
