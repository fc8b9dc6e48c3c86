"""PollyActor: vendor.aws_polly's query delegate; each `code` is a JSON payload Amazon Polly turns into speech
(docs/protocol.md §8.5).

Who owns what. The actor (its thread): the queue of runs, the current call and its deadline timer, and the
incarnation's ClientBox. PollyCall jobs (polly_worker.py, on pool threads): the boto3 calls and their HTTP
responses; each tells the actor its one outcome. The language runner hands this actor one `code` run at a time and
sends the run's `finished` when it hears RunDone (docs/architecture.md §5.2); the actor sends the run's `media` or
`stderr` to the agent first.

Life of one incarnation: one `Phase`, changed only through `to_phase` (LIFECYCLE; docs/architecture.md §3.4)::

    STARTING ──(settings read from the child env)──> IDLE ──(a run's payload parsed, its PollyCall started)──> CALLING
                                                      ▲                                                         │
                                                      └─(audio: media, 0 | an AWS error: stderr, 1 | the deadline: ┘
                                                         stderr, 124 | interrupt: stderr, 130; then the next run)

    CALLING ──(the call's worker died: the run ends with 1)──> ENDED (Crashed: the supervisor restarts the actor)
    STARTING, IDLE, CALLING ──(stop requested, a crash, stopped from outside)──> ENDED

A payload that is not `{"text", "voiceId", "textType"}` is answered in IDLE at once (stderr naming the field, 2).
A call that ends by interrupt or by the deadline is abandoned, not waited for: `cancel()` cuts its audio read short,
and its late outcome is ignored by call id, while the next run starts on another pool thread (polly_worker.py).
The deadline is `setup_timeout_s` until the call is sent (importing boto3, making the client) and `call_timeout_s`
from then on (every attempt, the retries' backoff and the audio read), on top of boto3's own per-attempt timeouts.

Every accepted run gets exactly one RunDone, however the incarnation ends: at ENDED, `cleanup` answers the current
run (1, with a note) and hands queued runs back to the child directory, so the next incarnation runs them (or, if
the child is gone for good, its reject answers them). The supervisor sees STARTING, then RUNNING (IDLE, CALLING).
"""

from __future__ import annotations

import base64
import collections
import enum
import itertools
from collections.abc import Mapping
from typing import Literal

import attrs

from kernel_runner.actors.polly.worker import (
    CONNECT_TIMEOUT_S,
    MAX_ATTEMPTS,
    READ_TIMEOUT_S,
    BadPayload,
    ClientBox,
    ClientFactory,
    PollyCall,
    PollySettings,
    make_boto3_client,
    parse_speech_request,
)
from kernel_runner.context import RunnerContext
from kernel_runner.ids import LANG_CHILD
from kernel_runner.messages import (
    CompleteCode,
    FeedInput,
    InterruptRun,
    Media,
    Output,
    PollyCallFailed,
    PollyCallSending,
    PollySynthesized,
    PollyWorkerDied,
    RunDone,
    RunTask,
)
from kernel_runner.observability.debug_lines import debug
from kernel_runner.supervision.actor import Lifecycle, PhasedActor
from kernel_runner.supervision.exits import Crashed, ExitReason, ShutdownExit
from kernel_runner.supervision.spec import ChildContext, ChildState, StopRequested
from kernel_runner.supervision.timers import TimerHandle
from kernel_runner.wire.answers import EXIT_NOT_RUN

SETUP_TIMEOUT_S = 30.0  # importing boto3 and making the client, before the request is sent
CALL_TIMEOUT_S = 60.0  # from sending to having the audio: every attempt and the backoff between them

EXIT_OK = 0
EXIT_FAILED = 1  # the call failed (AWS said no, or could not be reached), or its worker died
EXIT_BAD_PAYLOAD = 2  # the `code` is not the JSON payload (as a usage error)
EXIT_DEADLINE = 124  # the call did not end within its deadline (coreutils `timeout`)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as every interrupted run here


@attrs.frozen(kw_only=True)
class PollyActorSettings:
    """The Polly child's configuration (runtime/tree.py makes its spec).

    Credentials, region and endpoint come from the child env (PollySettings.from_env); the timeouts and attempts
    are boto3's per-attempt bounds, the actor's stage deadlines on top; `client_factory` makes the boto3 client.
    """

    client_factory: ClientFactory = make_boto3_client
    setup_timeout_s: float = SETUP_TIMEOUT_S
    call_timeout_s: float = CALL_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    max_attempts: int = MAX_ATTEMPTS

    def client_settings(self, env: Mapping[str, str]) -> PollySettings:
        return PollySettings.from_env(env, connect_timeout_s=self.connect_timeout_s,
                                      read_timeout_s=self.read_timeout_s, max_attempts=self.max_attempts)


class Phase(enum.Enum):
    """Where one incarnation of the Polly actor is in its life (see the module docstring's diagram)."""

    STARTING = "starting"
    """Inside start_child: the settings are read; runs queue."""
    IDLE = "idle"
    """No call is in flight: the next queued run starts (a bad payload is answered here at once)."""
    CALLING = "calling"
    """A run's PollyCall is with a pool thread: waiting for its outcome, its deadline or an interrupt."""
    ENDED = "ended"
    """The incarnation is over (finish called, or cleanup ran); nothing follows."""


LIFECYCLE = Lifecycle(
    initial=Phase.STARTING,
    transitions={
        Phase.STARTING: frozenset({Phase.IDLE, Phase.ENDED}),
        Phase.IDLE: frozenset({Phase.CALLING, Phase.ENDED}),
        Phase.CALLING: frozenset({Phase.IDLE, Phase.ENDED}),
        Phase.ENDED: frozenset(),
    },
    # The supervisor's view of each phase; None: nothing to report (ENDED is reported by ChildExited).
    child_states={
        Phase.STARTING: ChildState.STARTING,
        Phase.IDLE: ChildState.RUNNING,
        Phase.CALLING: ChildState.RUNNING,
        Phase.ENDED: None,
    },
)


@attrs.frozen(kw_only=True)
class _CallDeadline:
    """Self-tick: the current stage of a call is over its time."""

    call_id: int
    stage: Literal["setup", "call"]


@attrs.define(kw_only=True, eq=False)
class _Current:
    task: RunTask
    call: PollyCall
    timer: TimerHandle
    sent: bool = False


class PollyActor(PhasedActor[Phase]):
    """Runs one speech synthesis at a time; interrupt and the deadline abandon a call instead of waiting for it."""

    redeliverable = (RunTask, CompleteCode)
    lifecycle = LIFECYCLE

    def __init__(
        self,
        *,
        ctx: ChildContext,
        runner: RunnerContext,
        settings: PollyActorSettings,
    ) -> None:
        super().__init__(ctx=ctx)
        self._router = runner.router
        self._settings = settings.client_settings(runner.env)
        self._client_factory = settings.client_factory
        self._setup_timeout_s = settings.setup_timeout_s
        self._call_timeout_s = settings.call_timeout_s
        self._box: ClientBox | None = None
        self._queue: collections.deque[RunTask] = collections.deque()
        self._current: _Current | None = None
        self._abandoned: dict[int, PollyCall] = {}  # calls nobody waits for; their late outcomes are ignored
        self._call_ids = itertools.count(1)
        self._ending_note = "kernel-runner: the Amazon Polly call was abandoned: its actor ended\n"

    def _end_life(self, reason: ExitReason, why: str) -> None:
        """-> ENDED, then end this incarnation with `reason` (the supervisor decides what follows)."""
        self.to_phase(Phase.ENDED, why)
        self.finish(reason)

    # ---- life ----------------------------------------------------------------------------------------------------
    def start_child(self) -> None:
        self._box = ClientBox(self._settings, self._client_factory)
        self._report_info()
        self.to_phase(Phase.IDLE, f"region {self._settings.region}")  # STARTING -> IDLE

    def request_stop(self, message: StopRequested) -> None:
        # Nothing to wait for: a call in flight cannot be cancelled, only abandoned (cleanup answers its run).
        self._ending_note = "kernel-runner: the Amazon Polly call was abandoned: the runner is stopping\n"
        self._end_life(ShutdownExit(), f"stop requested ({message.reason})")  # STARTING / IDLE / CALLING -> ENDED

    def cleanup(self) -> None:
        if self.phase is not Phase.ENDED:
            self.to_phase(Phase.ENDED, "cleanup")  # any phase -> ENDED: a crash, or stopped from outside
        current, self._current = self._current, None
        if current is not None:
            current.timer.cancel()
            current.call.cancel()
            self._run_done(current.task, EXIT_FAILED, note=self._ending_note)
        for call in self._abandoned.values():
            call.cancel()
        self._abandoned.clear()
        while self._queue:  # the next incarnation runs them; a child gone for good answers them (its reject)
            self.ctx.directory.hand_back(self.child_id, self.generation, self._queue.popleft())

    def _report_info(self) -> None:
        self.update_info({
            "region": self._settings.region,
            "endpoint_url": self._settings.endpoint_url,
            "abandoned_calls": len(self._abandoned),
        })

    # ---- dispatch ------------------------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        match message:
            case RunTask():
                return self._handle_run_task(message)
            case PollyCallSending():
                return self._handle_call_sending(message)
            case PollySynthesized():
                return self._handle_synthesized(message)
            case PollyCallFailed():
                return self._handle_call_failed(message)
            case PollyWorkerDied():
                return self._handle_worker_died(message)
            case _CallDeadline():
                return self._handle_call_deadline(message)
            case InterruptRun():
                return self._handle_interrupt_run()
            case FeedInput():
                return self._handle_feed_input()
            case CompleteCode():
                return self._handle_complete_code(message)
            case _:
                return super().handle(message)

    # ---- runs ----------------------------------------------------------------------------------------------------
    def _handle_run_task(self, task: RunTask) -> None:
        self._queue.append(task)
        self._run_next()

    def _run_next(self) -> None:
        """Start queued runs while IDLE: a bad payload is answered at once, a good one starts a call (-> CALLING)."""
        while self.phase is Phase.IDLE and self._queue:
            self._start(self._queue.popleft())

    def _start(self, task: RunTask) -> None:
        if task.kind != "code":
            self._stderr(f"kernel-runner: vendor.aws_polly takes only `code` in query mode, not {task.kind}\n")
            self._run_done(task, EXIT_NOT_RUN)
            return
        request = parse_speech_request(task.text)
        if isinstance(request, BadPayload):
            self.log.info("run {}: bad payload: {}", task.run_id, request.reason)
            self._stderr(f"kernel-runner: {request.reason}\n")
            self._run_done(task, EXIT_BAD_PAYLOAD)
            return
        assert self._box is not None
        call = PollyCall(call_id=next(self._call_ids), request=request, box=self._box, owner=self.actor_ref)
        try:
            call.start()
        except RuntimeError as exc:  # no thread could be started: this incarnation cannot work
            self._stderr(f"kernel-runner: the Amazon Polly worker could not start: {exc}\n")
            self._run_done(task, EXIT_FAILED)
            self._end_life(Crashed(error=f"no worker thread: {exc!r}"), "no worker thread")  # IDLE -> ENDED
            return
        timer = self.schedule(self._setup_timeout_s, _CallDeadline(call_id=call.call_id, stage="setup"))
        self._current = _Current(task=task, call=call, timer=timer)
        self.log.info("run {}: call {} voice {} ({}, {} characters)", task.run_id, call.call_id, request.voice_id,
                      request.text_type, len(request.text))
        self.to_phase(Phase.CALLING, f"run {task.run_id} call {call.call_id}")  # IDLE -> CALLING

    def _current_call(self, call_id: int) -> _Current | None:
        current = self._current
        if current is not None and current.call.call_id == call_id:
            return current
        return None

    def _handle_call_sending(self, message: PollyCallSending) -> None:
        current = self._current_call(message.call_id)
        if current is None:
            return
        current.timer.cancel()
        current.sent = True
        current.timer = self.schedule(self._call_timeout_s, _CallDeadline(call_id=message.call_id, stage="call"))

    def _handle_synthesized(self, message: PollySynthesized) -> None:
        current = self._take(message.call_id, "its audio")
        if current is None:
            return
        content_type = message.content_type
        data = base64.b64encode(message.audio).decode("ascii")
        # docs/protocol.md §8.5: one media message, the audio as a data URI of its own content type.
        self._router.tell(Media(mime=content_type, data=f"data:{content_type};base64,{data}"))
        self.log.info("run {}: {} bytes of {}", current.task.run_id, len(message.audio), content_type)
        self._end_run(current, EXIT_OK)

    def _handle_call_failed(self, message: PollyCallFailed) -> None:
        current = self._take(message.call_id, "its failure")
        if current is None:
            return
        self.log.warning("run {}: {}", current.task.run_id, message.text.strip())
        self._stderr(message.text)
        self._end_run(current, message.exit_code)

    def _handle_worker_died(self, message: PollyWorkerDied) -> None:
        current = self._take(message.call_id, "its worker's death")
        if current is None:
            self.log.error("the worker of abandoned call {} died: {}", message.call_id, message.error)
            return
        current.timer.cancel()
        self._current = None  # answered here, so cleanup does not answer it again
        note = f"kernel-runner: the Amazon Polly worker failed ({message.error}); it is being restarted\n"
        self._run_done(current.task, EXIT_FAILED, note=note)
        # A worker that fails outside any AWS error is a bug: a fresh incarnation (and client) is the supervisor's call.
        self._end_life(Crashed(error=f"Polly worker died: {message.error}"), "the worker died")  # CALLING -> ENDED

    def _handle_call_deadline(self, message: _CallDeadline) -> None:
        current = self._current_call(message.call_id)
        if current is None or (message.stage == "call") != current.sent:
            return
        if current.sent:
            text = f"Amazon Polly did not finish within {self._call_timeout_s:g} s"
        else:
            text = f"the AWS client for Amazon Polly was not ready within {self._setup_timeout_s:g} s"
        self.log.warning("run {}: {}; abandoning call {}", current.task.run_id, text, current.call.call_id)
        self._abandon(current)
        self._stderr(f"kernel-runner: {text}; the call was abandoned\n")
        self._end_run(current, EXIT_DEADLINE)

    def _take(self, call_id: int, what: str) -> _Current | None:
        """The current call if `call_id` is it; a late outcome of an abandoned call is dropped here."""
        current = self._current_call(call_id)
        if current is not None:
            return current
        if self._abandoned.pop(call_id, None) is not None:
            debug(self.log, "call {} was abandoned; {} is ignored", call_id, what)
            self._report_info()
        else:
            debug(self.log, "call {} is not current; {} is ignored", call_id, what)
        return None

    def _abandon(self, current: _Current) -> None:
        current.call.cancel()
        self._abandoned[current.call.call_id] = current.call
        self._report_info()

    def _end_run(self, current: _Current, exit_code: int) -> None:
        """CALLING -> IDLE: the run's outputs are out; its RunDone goes to the language runner, then the next run."""
        current.timer.cancel()
        self._current = None
        self.to_phase(Phase.IDLE, f"run {current.task.run_id} ended with {exit_code}")  # CALLING -> IDLE
        self._run_done(current.task, exit_code)
        self._run_next()

    def _run_done(self, task: RunTask, exit_code: int, *, note: str | None = None) -> None:
        """The language runner sends the run's one Finished once it hears this (docs/architecture.md §5.2)."""
        self.tell_child(LANG_CHILD, RunDone(run_id=task.run_id, exit_code=exit_code, note=note))

    def _stderr(self, text: str) -> None:
        self._router.tell(Output(stream="stderr", data=text.encode("utf-8", errors="replace")))

    # ---- inline ops ----------------------------------------------------------------------------------------------
    def _handle_interrupt_run(self) -> None:
        current = self._current
        if current is not None:
            # A boto3 call cannot be cancelled: the run ends now and the call is abandoned (docs/protocol.md §8.5).
            self.log.info("interrupt: run {} ends; call {} is abandoned", current.task.run_id, current.call.call_id)
            self._abandon(current)
            self._stderr("kernel-runner: interrupted; the Amazon Polly call was abandoned\n")
            self._end_run(current, EXIT_INTERRUPTED)
            return
        # Runs queue only while a call is current (IDLE starts them at once), so there is nothing to interrupt.
        self.log.info("interrupt: nothing is running")

    def _handle_feed_input(self) -> None:
        self.log.info("input dropped: vendor.aws_polly takes no input")

    def _handle_complete_code(self, message: CompleteCode) -> None:
        message.answer.send(())  # docs/protocol.md §8.5: no completion


__all__ = ["LIFECYCLE", "Phase", "PollyActor", "PollyActorSettings"]
