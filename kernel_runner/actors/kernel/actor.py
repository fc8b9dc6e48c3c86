"""KernelActor: one Jupyter kernel process as a supervised child (docs/protocol.md §4).

What it runs lives in process.py (``KernelProcess``: the kernel process, its watcher and its channel thread), whose
helper threads are in channels.py (``KernelStarter`` spawns the kernel, ``KernelChannels`` owns every socket to it);
the pure kernelspec and output-mapping pieces are in jupyter.py. The actor itself never blocks: it decides, and its
KernelProcess signals the process group and queues commands.

Life of one incarnation: one ``Phase``, changed only through ``to_phase``; ``LIFECYCLE`` has every allowed edge.

    LAUNCHING   KernelStarter finds the kernelspec and spawns the kernel; runs queue
        │ KernelLaunched
        v
    CONNECTING  the channel thread waits for a kernel_info_reply, IOPub and the stdin handshake; runs queue
        │ KernelReady
        v
    READY       one cell at a time (the current run and the queue are data); completions go to the kernel
        │ an interrupt ignored for `interrupt_kill_after_s`: SIGKILL to the kernel's tree
        v
    KILLING     waits for the killed kernel's exit; the interrupted run ends with 130 when it comes

    LAUNCHING, CONNECTING, READY, KILLING ── the kernel exited, could not start, or its channels failed ──> DYING
    READY ── its heartbeat went unanswered (stopped or hung, docs/protocol.md §4.7): SIGKILL to its tree ──> DYING
    DYING     the running cell is ended through the channel thread (its last outputs first, then a stderr note),
              or by END_RUN_TIMEOUT_S ──> RETIRING
    RETIRING  queued runs were handed back for the next incarnation (answered with the start error after a failed
              start) and pending completions answered; our _Retire comes through the inbox after what was already
              in it (handed back too) ──> ENDED, with the death's reason (ProcessDied, StartFailed, Crashed)

    LAUNCHING, CONNECTING, READY, KILLING ── StopRequested ──> STOPPING: a shutdown_request first (READY, no cell running),
              then stop_process ── the process is gone (or never was) ──> ENDED, with ShutdownExit
    A stop requested while DYING or RETIRING changes nothing: the death ends the incarnation by itself, promptly.

The supervisor sees STARTING (LAUNCHING, CONNECTING), RUNNING (READY, KILLING), BACKOFF (DYING, RETIRING) and
STOPPING, reported by the base after each edge only. Every accepted run gets exactly one RunDone to the language runner,
whatever way the incarnation ends (the language runner sends the run's Finished), and every completion one answer.
"""

from __future__ import annotations

import collections
import enum
import itertools
import signal
from collections.abc import Mapping

import attrs

from kernel_runner.actors.kernel.channels import (
    READY_TIMEOUT_S,
    CompleteCommand,
    EndRunCommand,
    ExecuteCommand,
    KernelHeartbeatLost,
    SendInputCommand,
)
from kernel_runner.actors.kernel.jupyter import (
    HEARTBEAT_IDLE_INTERVAL_S,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TIMEOUT_S,
    INTERRUPTED_EXIT,
    NO_KERNEL_EXIT,
    death_exit_code,
    death_run_end,
    heartbeat_lost_note,
    restart_notice,
)
from kernel_runner.actors.kernel.process import KernelProcess
from kernel_runner.context import RunnerContext
from kernel_runner.ids import LANG_CHILD, RunId
from kernel_runner.messages import (
    Answer,
    CompleteCode,
    FeedInput,
    InterruptRun,
    KernelChannelsClosed,
    KernelCompletion,
    KernelInputRequested,
    KernelLaunched,
    KernelReady,
    KernelRunEnded,
    KernelStartFailed,
    PipeClosed,
    ProcessExited,
    RunDone,
    RunTask,
    WaitingInput,
)
from kernel_runner.observability.debug_lines import debug
from kernel_runner.observability.events import Event, emit
from kernel_runner.procs.process import describe_returncode
from kernel_runner.supervision.actor import Lifecycle, PhasedActor
from kernel_runner.supervision.exits import Crashed, ExitReason, ProcessDied, ShutdownExit, StartFailed, Unhealthy
from kernel_runner.supervision.spec import ChildContext, ChildState, StopRequested

# ---- knobs (docs/architecture.md §4; docs/protocol.md §4) -----------------------------------------------------------
# The agent waits for `completion` without a limit (docs/protocol.md §3.5); a cold jedi cache makes the first one take ~3 s.
COMPLETE_TIMEOUT_S = 5.0
# An interrupt that does not end the run in this time kills the kernel, so an interrupt always ends the run.
INTERRUPT_KILL_AFTER_S = 10.0
# How long the channel thread may take to flush a dead kernel's last outputs before the actor ends the run itself.
END_RUN_TIMEOUT_S = 2.0
KERNEL_LOG_LINE_CHARS = 4096  # what the kernel process itself prints goes to our log, a line at most this long


@attrs.frozen(kw_only=True)
class KernelSettings:
    """One kernel child's configuration (runtime/tree.py makes its spec).

    `kernel_name` is matched exactly (python: `python3`, the kernelspec ipykernel installs); `env` is the kernel's
    environment (default: the runner environment from the context, as upstream gives the kernel os.environ);
    `heartbeat_interval_s` (while a cell runs), `heartbeat_idle_interval_s` and `heartbeat_timeout_s` are its hang
    detection (docs/protocol.md §4.7).
    """

    kernel_name: str
    env: Mapping[str, str] | None = None
    ready_timeout_s: float = READY_TIMEOUT_S
    complete_timeout_s: float = COMPLETE_TIMEOUT_S
    interrupt_kill_after_s: float = INTERRUPT_KILL_AFTER_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
    heartbeat_idle_interval_s: float = HEARTBEAT_IDLE_INTERVAL_S


# ======================================================================================================================
# Phases
# ======================================================================================================================


class Phase(enum.Enum):
    """One kernel incarnation's life (the diagram in the module docstring)."""

    LAUNCHING = "launching"
    """KernelStarter finds the kernelspec and spawns the kernel; runs queue."""
    CONNECTING = "connecting"
    """The process is up; the channel thread waits for kernel_info, IOPub and the stdin handshake; runs queue."""
    READY = "ready"
    """The kernel answers: runs execute one at a time (the current run and the queue are data); completions go to it."""
    KILLING = "killing"
    """An interrupt was ignored for `interrupt_kill_after_s`: the kernel's tree was SIGKILLed; waiting for its exit."""
    DYING = "dying"
    """The kernel exited, could not start, or its channels failed: the running cell is being ended, once."""
    RETIRING = "retiring"
    """Queued work was handed back; our _Retire, behind what the inbox already held, ends the incarnation."""
    STOPPING = "stopping"
    """A stop was requested: a shutdown_request (READY only), then stop_process; the process's exit ends us."""
    ENDED = "ended"
    """finish() was called; the base hands back whatever still arrives."""


# Phases in which the kernel is alive or on its way up: a death or a stop request can still change them.
_ALIVE = (Phase.LAUNCHING, Phase.CONNECTING, Phase.READY, Phase.KILLING)

LIFECYCLE = Lifecycle(
    initial=Phase.LAUNCHING,
    transitions={
        Phase.LAUNCHING: frozenset({Phase.CONNECTING, Phase.DYING, Phase.STOPPING}),
        Phase.CONNECTING: frozenset({Phase.READY, Phase.DYING, Phase.STOPPING}),
        Phase.READY: frozenset({Phase.KILLING, Phase.DYING, Phase.STOPPING}),
        Phase.KILLING: frozenset({Phase.DYING, Phase.STOPPING}),
        Phase.DYING: frozenset({Phase.RETIRING}),
        Phase.RETIRING: frozenset({Phase.ENDED}),
        Phase.STOPPING: frozenset({Phase.ENDED}),
        Phase.ENDED: frozenset(),
    },
    # What the supervisor is told for each phase (None: nothing; the base reports the exit).
    child_states={
        Phase.LAUNCHING: ChildState.STARTING,
        Phase.CONNECTING: ChildState.STARTING,
        Phase.READY: ChildState.RUNNING,
        Phase.KILLING: ChildState.RUNNING,
        Phase.DYING: ChildState.BACKOFF,
        Phase.RETIRING: ChildState.BACKOFF,
        Phase.STOPPING: ChildState.STOPPING,
        Phase.ENDED: None,
    },
)


# ======================================================================================================================
# KernelActor
# ======================================================================================================================


@attrs.frozen(kw_only=True)
class _InterruptDeadline:
    run_id: RunId


@attrs.frozen(kw_only=True)
class _CompletionDeadline:
    request_id: int


@attrs.frozen(kw_only=True)
class _EndRunDeadline:
    run_id: RunId


@attrs.frozen(kw_only=True)
class _Retire:
    pass


@attrs.define(kw_only=True)
class _Run:
    task: RunTask
    waiting_input: bool = False
    interrupted: bool = False


class KernelActor(PhasedActor[Phase]):
    """One kernel incarnation: queues code until the kernel is ready, runs one cell at a time, ends each run once.

    When the kernel process dies, the running cell ends non-zero with a stderr line, queued cells go back to the
    supervisor (which hands them to the next incarnation), and the actor exits with ProcessDied so the supervisor
    restarts the kernel with backoff and gives up after too many restarts.
    """

    redeliverable = (RunTask, CompleteCode)
    lifecycle = LIFECYCLE

    def __init__(
        self,
        *,
        ctx: ChildContext,
        runner: RunnerContext,
        settings: KernelSettings,
    ) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self.kernel_name = settings.kernel_name
        self._interrupt_kill_after_s = settings.interrupt_kill_after_s
        self._complete_timeout_s = settings.complete_timeout_s
        self._kernel = KernelProcess(
            owner=self.actor_ref, runner=runner, kernel_name=settings.kernel_name, env=settings.env, clock=ctx.clock,
            run_done=self._tell_run_done, ready_timeout_s=settings.ready_timeout_s,
            heartbeat_interval_s=settings.heartbeat_interval_s, heartbeat_timeout_s=settings.heartbeat_timeout_s,
            heartbeat_idle_interval_s=settings.heartbeat_idle_interval_s)
        self._queue: collections.deque[RunTask] = collections.deque()
        self._current: _Run | None = None
        self._completions: dict[int, Answer[tuple[str, ...]]] = {}  # by the id of their complete_request
        self._completion_ids = itertools.count(1)
        # Why it is dying, set with the edge to DYING; after a failed start, the text that answers handed-back runs.
        self._death: ExitReason | None = None
        self._start_error: str | None = None
        # A restarted kernel has lost the user's variables: its first run says so (docs/protocol.md §4.2).
        self._owes_restart_notice = ctx.generation > 1

    def reported_pid(self) -> int | None:
        return self._kernel.pid

    # ---- life ------------------------------------------------------------------------------------------------
    def start_child(self) -> None:
        self._kernel.start()  # LAUNCHING, the initial phase
        self.update_info({"kernel": self.kernel_name, "ready": False})

    def cleanup(self) -> None:
        self._kernel.close()
        # A death hands its work back before ENDED, so work left here was left by a stop (or by a crash).
        stopped = self.phase in (Phase.STOPPING, Phase.ENDED)
        self._abandon_work("the runner is stopping" if stopped else "the Jupyter kernel actor ended")

    def request_stop(self, message: StopRequested) -> None:
        if self.phase not in _ALIVE:
            # DYING, RETIRING: the death ends this incarnation by itself, promptly; STOPPING: already on its way.
            self.log.info("stop requested while {}: {}; it is ending already", self.phase.name, message.reason)
            return
        # The channels saw it answer, so a shutdown_request can reach it; but a kernel running a cell acts on it only
        # once the cell ends, so waiting for that would only spend the stop's deadline (docs/protocol.md §1.7).
        polite = self.phase is Phase.READY and self._current is None
        self.to_phase(Phase.STOPPING, message.reason)  # LAUNCHING/CONNECTING/READY/KILLING -> STOPPING
        if not self._kernel.stop(message.grace_s, polite=polite, log=self.log):
            self._exit(ShutdownExit(), "no kernel process to stop")  # STOPPING -> ENDED

    def _exit(self, reason: ExitReason, why: str) -> None:
        """The one way this incarnation ends itself (the base then detaches, cleans up and reports the exit)."""
        self.to_phase(Phase.ENDED, why)  # STOPPING/RETIRING -> ENDED
        self.finish(reason)

    # ---- dispatch --------------------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        match message:
            case RunTask():
                return self._handle_run_task(message)
            case FeedInput():
                return self._handle_feed_input(message)
            case InterruptRun():
                return self._handle_interrupt_run(message)
            case CompleteCode():
                return self._handle_complete_code(message)
            case KernelLaunched():
                return self._handle_kernel_launched(message)
            case KernelReady():
                return self._handle_kernel_ready(message)
            case KernelStartFailed():
                return self._handle_kernel_start_failed(message)
            case KernelChannelsClosed():
                return self._handle_kernel_channels_closed(message)
            case KernelHeartbeatLost():
                return self._handle_kernel_heartbeat_lost(message)
            case KernelRunEnded():
                return self._handle_kernel_run_ended(message)
            case KernelInputRequested():
                return self._handle_kernel_input_requested(message)
            case KernelCompletion():
                return self._handle_kernel_completion(message)
            case ProcessExited():
                return self._handle_process_exited(message)
            case PipeClosed():
                return None
            case _InterruptDeadline():
                return self._handle_interrupt_deadline(message)
            case _CompletionDeadline():
                return self._handle_completion_deadline(message)
            case _EndRunDeadline():
                return self._handle_end_run_deadline(message)
            case _Retire():
                return self._handle_retire()
            case _:
                return super().handle(message)

    # ---- kernel start ----------------------------------------------------------------------------------------
    def _handle_kernel_launched(self, message: KernelLaunched) -> None:
        handle = self._kernel.launched_as(message)
        self.log = self.log.bind(pid=handle.pid)
        self.log.info("kernel {} argv={} cwd={}", message.kernel_name, handle.argv, handle.cwd)
        if self.phase is not Phase.STOPPING:
            self.to_phase(Phase.CONNECTING, f"pid {handle.pid}")  # LAUNCHING -> CONNECTING
        self.update_info(
            {"kernel_pid": handle.pid, "connection_file": message.connection_file, "interrupt_mode": message.interrupt_mode}
        )
        # Also when STOPPING (spawned while the stop was on its way): stop_process has the handle, and the exit ends us.
        self._kernel.watch(self.log)
        if self.phase is Phase.CONNECTING:
            self._kernel.connect(self.log)

    def _handle_kernel_ready(self, message: KernelReady) -> None:
        if self.phase is not Phase.CONNECTING:
            debug(self.log, "kernel ready while {}: ignored", self.phase.name)
            return
        emit(self.log, "INFO", Event.HEALTHY,
             "healthy: kernel {} ({} {}, protocol {})", self.kernel_name, message.implementation,
             message.language, message.protocol_version)
        self.to_phase(Phase.READY, "the kernel answered")  # CONNECTING -> READY
        self.update_info({"ready": True})
        self._start_next()

    def _handle_kernel_start_failed(self, message: KernelStartFailed) -> None:
        match self.phase:
            case Phase.STOPPING:
                self._exit(ShutdownExit(), "the start failed while stopping")  # STOPPING -> ENDED
            case Phase.LAUNCHING | Phase.CONNECTING:
                self.log.error("the {} kernel failed to start: {}", self.kernel_name, message.error)
                self._die(StartFailed(error=message.error), start_error=message.error)
            case _:
                debug(self.log, "start failure while {} ignored: {}", self.phase.name, message.error)

    def _handle_kernel_channels_closed(self, message: KernelChannelsClosed) -> None:
        if self.phase in _ALIVE:  # STOPPING: the stop ends us; DYING, RETIRING: dying already
            self._die(Crashed(error=f"kernel channels failed: {message.error}"))

    def _handle_kernel_heartbeat_lost(self, message: KernelHeartbeatLost) -> None:
        """A stopped or hung kernel never exits by itself: kill it, end its run, and let the supervisor restart it."""
        handle = self._kernel.handle
        if self.phase is not Phase.READY or handle is None:
            # KILLING, STOPPING: being killed or stopped already; DYING, RETIRING: gone already.
            self.log.info("heartbeat lost while {}: nothing more to do", self.phase.name)
            return
        detail = f"no heartbeat for {message.silent_s:.0f} s"
        emit(self.log, "ERROR", Event.UNHEALTHY,
             "unhealthy: the {} kernel has not answered its heartbeat for {:.1f} s (stopped or hung); "
             "SIGKILL to its tree", self.kernel_name, message.silent_s)
        handle.kill_tree()  # a stopped process dies of SIGKILL too; its exit reaches us while DYING
        note = heartbeat_lost_note(self.kernel_name, message.silent_s)
        self._die(Unhealthy(detail=detail), run_end=(death_exit_code(-signal.SIGKILL), note))

    # ---- runs ---------------------------------------------------------------------------------------------------
    def _handle_run_task(self, task: RunTask) -> None:
        if self.phase in (Phase.DYING, Phase.RETIRING):
            self._handback(task)
            return
        if task.kind != "code":
            self.log.error("run {}: a {} request reached the Jupyter kernel; only code runs here", task.run_id, task.kind)
            self._answer_without_kernel(task, f"kernel-runner: {task.kind} requests do not run in the Jupyter kernel\n")
            return
        self._queue.append(task)
        self._start_next()

    def _start_next(self) -> None:
        if self.phase is not Phase.READY or self._current is not None or not self._queue or self._kernel.channels is None:
            return
        task = self._queue.popleft()
        self._current = _Run(task=task)
        debug(self.log, "run {}: executing {} bytes", task.run_id, len(task.text))
        notice = restart_notice(self.kernel_name) if self._owes_restart_notice else None
        self._owes_restart_notice = False
        self._kernel.channels.submit(ExecuteCommand(run_id=task.run_id, code=task.text, notice=notice))

    def _handle_kernel_run_ended(self, message: KernelRunEnded) -> None:
        run = self._current
        if run is None or run.task.run_id != message.run_id:
            debug(self.log, "late end of run {} ignored", message.run_id)
            return
        self._end_current(message.exit_code, reported=True)  # the channel thread told the language runner

    def _end_current(self, exit_code: int, note: str | None = None, *, reported: bool = False) -> None:
        run = self._current
        if run is None:
            return
        self._current = None
        if not reported:
            self._tell_run_done(run.task.run_id, exit_code, note)
        debug(self.log, "run {} finished with exit code {}", run.task.run_id, exit_code)
        if self.phase is Phase.DYING:
            self._retire()
        else:
            self._start_next()  # only READY starts one: a killed or stopping kernel takes no more code

    def _tell_run_done(self, run_id: RunId, exit_code: int, note: str | None = None) -> None:
        """The language runner sends the run's one Finished (after `note` on stderr). Thread-safe: the channel
        thread calls it too, when a run ends normally."""
        self.tell_child(LANG_CHILD, RunDone(run_id=run_id, exit_code=exit_code, note=note))

    def _answer_without_kernel(self, task: RunTask, text: str) -> None:
        self._tell_run_done(task.run_id, NO_KERNEL_EXIT, text)

    def _handback(self, task: RunTask) -> None:
        """A run this incarnation will not start: the supervisor keeps it for the next one (or rejects it)."""
        if self._start_error is not None:
            # A failed start: answer now with the reason instead of waiting through the restart backoff.
            self._answer_without_kernel(task, f"kernel-runner: query mode is unavailable: {self._start_error}\n")
            return
        self.ctx.directory.hand_back(self.child_id, self.generation, task)

    # ---- input, interrupt, completion ---------------------------------------------------------------------------
    def _handle_feed_input(self, message: FeedInput) -> None:
        run = self._current
        if run is None or not run.waiting_input or self._kernel.channels is None:
            self.log.info("input dropped: nothing is waiting for input")
            return
        run.waiting_input = False
        self._kernel.channels.submit(SendInputCommand(run_id=run.task.run_id, value=message.text))

    def _handle_kernel_input_requested(self, message: KernelInputRequested) -> None:
        run = self._current
        if run is None or run.task.run_id != message.run_id:
            return
        run.waiting_input = True
        self._runner.router.tell(WaitingInput(is_password=message.is_password))

    def _handle_interrupt_run(self, message: InterruptRun) -> None:
        run = self._current
        if run is None:
            if self._queue:
                # Code waiting for a kernel that is not up (yet): the interrupt cancels it (exactly one Finished).
                task = self._queue.popleft()
                self.log.info("interrupt: run {} cancelled before the kernel was ready", task.run_id)
                self._tell_run_done(task.run_id, INTERRUPTED_EXIT, "KeyboardInterrupt (the kernel was not ready yet)\n")
                return
            self.log.info("interrupt: nothing is running")
            return
        if self.phase not in (Phase.READY, Phase.STOPPING):
            self.log.info("interrupt: run {} is ending already ({})", run.task.run_id, self.phase.name)
            return
        run.waiting_input = False
        self._kernel.interrupt(self.log)
        if not run.interrupted:
            run.interrupted = True
            self.schedule(self._interrupt_kill_after_s, _InterruptDeadline(run_id=run.task.run_id))

    def _handle_interrupt_deadline(self, message: _InterruptDeadline) -> None:
        run = self._current
        handle = self._kernel.handle
        # Only a READY kernel is killed here: a stopping one is being stopped, a dying one is gone.
        if run is None or run.task.run_id != message.run_id or self.phase is not Phase.READY or handle is None:
            return
        self.log.warning(
            "the kernel ignored the interrupt for {:g} s; killing it so the run ends", self._interrupt_kill_after_s
        )
        self.to_phase(Phase.KILLING, f"run {run.task.run_id} ignored the interrupt")  # READY -> KILLING
        handle.kill_tree()

    def _handle_complete_code(self, message: CompleteCode) -> None:
        if self.phase is not Phase.READY or self._kernel.channels is None:
            message.answer.refuse("the kernel is not ready")
            return
        request_id = next(self._completion_ids)
        self._completions[request_id] = message.answer
        cursor = message.options.get("cursor_pos") if isinstance(message.options, Mapping) else None
        cursor_pos = cursor if isinstance(cursor, int) and 0 <= cursor <= len(message.code) else len(message.code)
        self._kernel.channels.submit(CompleteCommand(request_id=request_id, code=message.code, cursor_pos=cursor_pos))
        self.schedule(self._complete_timeout_s, _CompletionDeadline(request_id=request_id))

    def _handle_kernel_completion(self, message: KernelCompletion) -> None:
        answer = self._completions.pop(message.request_id, None)
        if answer is not None:
            answer.send(message.matches)

    def _handle_completion_deadline(self, message: _CompletionDeadline) -> None:
        answer = self._completions.pop(message.request_id, None)
        if answer is not None:
            self.log.warning("completion got no reply within {:g} s; answered with no matches", self._complete_timeout_s)
            answer.refuse("no complete_reply in time")

    # ---- death, restart hand-off and stop -----------------------------------------------------------------------
    def _handle_process_exited(self, message: ProcessExited) -> None:
        code, sig = describe_returncode(message.returncode)
        how = f"killed by signal {sig}" if sig is not None else f"exit code {code}"
        match self.phase:
            case Phase.STOPPING:
                debug(self.log, "the kernel process ended ({}) as asked", how)  # the supervisor logs the exit
                self._exit(ShutdownExit(code=code, signal=sig), "the kernel process is gone")  # STOPPING -> ENDED
            case Phase.DYING | Phase.RETIRING:
                debug(self.log, "the {} kernel ended ({}), which is dying already", self.kernel_name, how)
            case _:
                debug(self.log, "the {} kernel died ({})", self.kernel_name, how)  # the supervisor logs the exit
                starting = self.phase in (Phase.LAUNCHING, Phase.CONNECTING)
                self._die(
                    ProcessDied(code=code, signal=sig),
                    start_error=f"the {self.kernel_name} kernel exited during start ({how})" if starting else None,
                    note_how=how,
                    returncode=message.returncode,
                )

    def _die(
        self,
        reason: ExitReason,
        *,
        start_error: str | None = None,
        note_how: str | None = None,
        returncode: int = 1,
        run_end: tuple[int, str] | None = None,
    ) -> None:
        """The kernel is gone or unusable: end the running cell once (with `run_end`'s exit code and note, if given),
        then hand the rest back and exit with `reason`."""
        killed_for_interrupt = self.phase is Phase.KILLING
        self._death, self._start_error = reason, start_error
        # Detach first, so code told from now on waits for the next incarnation, not for us.
        self.ctx.directory.detach(self.child_id, self.generation)
        self.to_phase(Phase.DYING, reason.describe())  # LAUNCHING/CONNECTING/READY/KILLING -> DYING
        self.update_info({"ready": False})
        run = self._current
        if run is None:
            self._retire()
            return
        exit_code, note = run_end or death_run_end(
            self.kernel_name, how=note_how or reason.describe(), returncode=returncode,
            killed_after_s=self._interrupt_kill_after_s if killed_for_interrupt else None)
        channels = self._kernel.channels
        if channels is not None and channels.is_alive():
            channels.submit(EndRunCommand(run_id=run.task.run_id, exit_code=exit_code, note=note))
            self.schedule(END_RUN_TIMEOUT_S, _EndRunDeadline(run_id=run.task.run_id))
        else:
            self._end_current(exit_code, note)

    def _handle_end_run_deadline(self, message: _EndRunDeadline) -> None:
        run = self._current
        if run is not None and run.task.run_id == message.run_id:
            self.log.warning("run {}: the channel thread did not flush in time; ending it", message.run_id)
            self._end_current(1, "kernel-runner: the Jupyter kernel died while this code ran\n")

    def _retire(self) -> None:
        """Hand queued work back, then exit once messages already in our inbox have been handed back too."""
        self.to_phase(Phase.RETIRING, "no cell runs any more")  # DYING -> RETIRING
        while self._queue:
            self._handback(self._queue.popleft())
        self._refuse_completions("the kernel is gone")
        self.actor_ref.tell(_Retire())

    def _handle_retire(self) -> None:
        assert self.phase is Phase.RETIRING and self._death is not None
        self._exit(self._death, "what was in the inbox has been handed back")  # RETIRING -> ENDED

    def _abandon_work(self, why: str) -> None:
        """Every accepted run still ends exactly once, whatever way this actor ends."""
        if self._current is not None:
            run, self._current = self._current, None
            self._tell_run_done(run.task.run_id, 1, f"kernel-runner: the run was stopped: {why}\n")
        while self._queue:
            self._handback(self._queue.popleft())
        self._refuse_completions(why)

    def _refuse_completions(self, why: str) -> None:
        pending, self._completions = self._completions, {}
        for answer in pending.values():
            answer.refuse(why)


__all__ = ["LIFECYCLE", "KernelActor", "KernelSettings", "Phase"]
