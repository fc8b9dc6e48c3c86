"""Every message that crosses an actor boundary, as frozen keyword-only values. No logic."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Literal, Union

import attrs

from kernel_runner.ids import ChildId, Pid, RunId

BatchKind = Literal["clean", "build", "exec"]
RunKind = Literal["clean", "build", "exec", "code"]
StreamName = Literal["stdout", "stderr"]

# --------------------------------------------------------------------------------------------
# Agent edge: requests decoded by wire.decode (spec §2.4)
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RunBatch:
    kind: BatchKind
    command: str


@attrs.frozen(kw_only=True)
class RunCode:
    source: str


@attrs.frozen(kw_only=True)
class FeedInput:
    text: str


@attrs.frozen(kw_only=True)
class CompleteCode:
    code: str
    # The agent forwards the client's options verbatim (spec §3.5); kept as data, never interpreted here.
    options: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class InterruptRun:
    pass


@attrs.frozen(kw_only=True)
class StatusRequest:
    pass


@attrs.frozen(kw_only=True)
class ServiceOptions:
    arguments: Mapping[str, str | list[str] | None] | None = None
    envs: Mapping[str, str] | None = None


@attrs.frozen(kw_only=True)
class ServiceInfo:
    """The `start-service` payload (spec §6.1)."""

    name: str
    port: int | None = None
    ports: tuple[int, ...] = ()
    protocol: str = "tcp"
    options: ServiceOptions = attrs.field(factory=ServiceOptions)


@attrs.frozen(kw_only=True)
class StartService:
    info: ServiceInfo


@attrs.frozen(kw_only=True)
class ShutdownService:
    name: str


@attrs.frozen(kw_only=True)
class GetApps:
    name: str | None


@attrs.frozen(kw_only=True)
class HealthCheck:
    """spec §7.1 plus the later upstream `interval`/`initial_delay` fields (anchors §1.2)."""

    path: str
    max_retries: int = 10
    max_wait_time: float = 5.0
    expected_status_code: int = 200
    interval: float | None = None
    initial_delay: float | None = None


@attrs.frozen(kw_only=True)
class PrestartActionSpec:
    action: str
    args: Mapping[str, Any] = attrs.field(factory=dict)
    ref: str | None = None


@attrs.frozen(kw_only=True)
class ModelServiceSpec:
    start_command: tuple[str, ...] | str
    port: int
    shell: str = "/bin/bash"
    pre_start_actions: tuple[PrestartActionSpec, ...] = ()
    health_check: HealthCheck | None = None


@attrs.frozen(kw_only=True)
class ModelInfo:
    name: str
    model_path: str | None = None
    service: ModelServiceSpec | None = None


@attrs.frozen(kw_only=True)
class StartModelService:
    model: ModelInfo


AgentRequest = Union[
    RunBatch,
    RunCode,
    FeedInput,
    CompleteCode,
    InterruptRun,
    StatusRequest,
    StartService,
    ShutdownService,
    GetApps,
    StartModelService,
]

# --------------------------------------------------------------------------------------------
# Agent edge: what goes out (spec §2.5). Only the Router encodes and sends these.
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Output:
    stream: StreamName
    data: bytes
    # True when the sender took a credit from the router's output credits; the router gives it back once sent.
    credited: bool = False


@attrs.frozen(kw_only=True)
class Media:
    mime: str
    data: str


@attrs.frozen(kw_only=True)
class Html:
    html: str


@attrs.frozen(kw_only=True)
class Finished:
    kind: RunKind
    exit_code: int


@attrs.frozen(kw_only=True)
class WaitingInput:
    is_password: bool = False


@attrs.frozen(kw_only=True)
class ServiceResult:
    status: Literal["started", "running", "failed"]
    error: str | None = None


@attrs.frozen(kw_only=True)
class ModelServiceResult:
    status: Literal["started", "running", "failed"]
    error: str | None = None


@attrs.frozen(kw_only=True)
class ModelServiceStatus:
    model_name: str
    is_healthy: bool


@attrs.frozen(kw_only=True)
class AppsResult:
    apps: tuple[Mapping[str, Any], ...]


@attrs.frozen(kw_only=True)
class CompletionResult:
    items: tuple[str, ...]


@attrs.frozen(kw_only=True)
class LogRecord:
    """A runner log line sent to the agent as the `log` type (only with --forward-logs=log)."""

    text: str


class ChildState(enum.Enum):
    """supervisord's state names (anchors §4.1)."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


@attrs.frozen(kw_only=True)
class ChildInfo:
    child_id: ChildId
    state: ChildState
    pid: int | None
    restarts: int
    generation: int
    last_exit: str | None
    uptime_s: float | None
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class StatusReply:
    started_at: float
    ready: bool
    children: tuple[ChildInfo, ...]


ToAgent = Union[
    Output,
    Media,
    Html,
    Finished,
    WaitingInput,
    ServiceResult,
    ModelServiceResult,
    ModelServiceStatus,
    AppsResult,
    CompletionResult,
    StatusReply,
    LogRecord,
]


@attrs.frozen(kw_only=True)
class BadFrame:
    """A frame that could not become an AgentRequest; logged, answered when the op has a reply (spec §2.2)."""

    reason: str
    frame_count: int
    op: str | None
    reply: ToAgent | None = None


@attrs.frozen(kw_only=True)
class FlushOutbox:
    """Router self-tick: try again to send what the PUSH socket refused (HWM reached or no agent)."""


# --------------------------------------------------------------------------------------------
# Processes and pumps
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ProcessExited:
    pid: Pid
    returncode: int
    signal: int | None
    at: float


@attrs.frozen(kw_only=True)
class PipeClosed:
    pid: Pid
    stream: StreamName


@attrs.frozen(kw_only=True)
class RunTask:
    run_id: RunId
    kind: RunKind
    text: str


@attrs.frozen(kw_only=True)
class RunDone:
    """A delegate (Jupyter kernel, terminal) → LangRunner: the run ended and its Finished has been sent already."""

    run_id: RunId
    exit_code: int


# --------------------------------------------------------------------------------------------
# Supervision
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NormalExit:
    def describe(self) -> str:
        return "normal"


@attrs.frozen(kw_only=True)
class ShutdownExit:
    def describe(self) -> str:
        return "shutdown"


@attrs.frozen(kw_only=True)
class ProcessDied:
    code: int
    signal: int | None = None

    def describe(self) -> str:
        if self.signal is not None:
            return f"process killed by signal {self.signal}"
        return f"process exited with code {self.code}"


@attrs.frozen(kw_only=True)
class StartFailed:
    error: str

    def describe(self) -> str:
        return f"start failed: {self.error}"


@attrs.frozen(kw_only=True)
class Crashed:
    error: str

    def describe(self) -> str:
        return f"crashed: {self.error}"


@attrs.frozen(kw_only=True)
class Unhealthy:
    detail: str

    def describe(self) -> str:
        return f"unhealthy: {self.detail}"


ExitReason = Union[NormalExit, ShutdownExit, ProcessDied, StartFailed, Crashed, Unhealthy]


@attrs.frozen(kw_only=True)
class ChildExited:
    child_id: ChildId
    generation: int
    reason: ExitReason


@attrs.frozen(kw_only=True)
class ChildStateChanged:
    child_id: ChildId
    generation: int
    state: ChildState
    pid: int | None = None
    detail: str | None = None


@attrs.frozen(kw_only=True)
class ChildInfoUpdated:
    """Child-specific figures for `status` (health state, last probe, ...), merged into ChildInfo.extra."""

    child_id: ChildId
    generation: int
    extra: Mapping[str, Any]


@attrs.frozen(kw_only=True)
class StopChild:
    child_id: ChildId
    reason: str
    # permanent: the child is forgotten after it stops (shutdown-service); otherwise it is restarted per policy.
    permanent: bool = True


@attrs.frozen(kw_only=True)
class StopRequested:
    """Supervisor → child: begin the child's own graceful stop (SIGTERM, grace, SIGKILL), then exit."""

    reason: str
    grace_s: float


@attrs.frozen(kw_only=True)
class RestartDue:
    child_id: ChildId
    generation: int


@attrs.frozen(kw_only=True)
class WhichChildrenQuery:
    pass


@attrs.frozen(kw_only=True)
class ForwardToChild:
    """Router → Supervisor: deliver to the child's current incarnation (refs change across restarts)."""

    child_id: ChildId
    message: object


@attrs.frozen(kw_only=True)
class Undelivered:
    """A child that is ending hands back work it will not do; the supervisor gives it to the next incarnation or rejects it."""

    child_id: ChildId
    generation: int
    message: object


@attrs.frozen(kw_only=True)
class StartupStepDone:
    step: str


@attrs.frozen(kw_only=True)
class ShutdownTree:
    grace_s: float


# --------------------------------------------------------------------------------------------
# Terminal (git runner, spec §8.3): TerminalActor's helper threads and self-ticks
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TerminalInput:
    """TermInputReceiver → TerminalActor: the first frame of one message from the terminal SUB socket."""

    data: bytes


@attrs.frozen(kw_only=True)
class PtyOutput:
    """PtyReader → TerminalActor: bytes the shell wrote to its pty; the actor publishes them on the PUB socket."""

    shell_id: int
    data: bytes


@attrs.frozen(kw_only=True)
class PtyClosed:
    """PtyReader → TerminalActor: the reader saw EOF/EIO (or was told to stop) and closed its end of the pty."""

    shell_id: int


@attrs.frozen(kw_only=True)
class ShellRespawnDue:
    """TerminalActor self-tick: the backoff after a shell exit has passed; start a new shell."""

    after_shell_id: int


@attrs.frozen(kw_only=True)
class TerminalInputFlushDue:
    """TerminalActor self-tick: the pty refused input (its buffer was full); try the pending bytes again."""


@attrs.frozen(kw_only=True)
class TerminalStopStepDue:
    """TerminalActor self-tick during a graceful stop: escalate from SIGHUP to SIGTERM, then to SIGKILL."""

    step: Literal["term", "kill"]
    shell_id: int


@attrs.frozen(kw_only=True)
class GitGraphDone:
    """GitGraphJob → TerminalActor: the result of `%show graph` (commits is None when the command failed)."""

    run_id: RunId
    exit_code: int
    commits: tuple[Mapping[str, Any], ...] | None
    stderr: bytes = b""


# --------------------------------------------------------------------------------------------
# Jupyter kernel: KernelActor and its helper threads (spec §4, actors/kernel.py, actors/kernel_channels.py)
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class KernelLaunched:
    """KernelStarter → KernelActor: the kernel process runs (not ready yet); its handle is in the shared launch box."""

    pid: Pid
    kernel_name: str
    connection_file: str
    interrupt_mode: Literal["signal", "message"]


@attrs.frozen(kw_only=True)
class KernelReady:
    """KernelChannels → KernelActor: kernel_info_reply arrived and IOPub delivers, so code can run."""

    implementation: str
    protocol_version: str
    language: str


@attrs.frozen(kw_only=True)
class KernelStartFailed:
    """KernelStarter/KernelChannels → KernelActor: no kernelspec, the spawn failed, or no readiness in time."""

    error: str


@attrs.frozen(kw_only=True)
class KernelChannelsClosed:
    """KernelChannels → KernelActor: the channel thread ended unexpectedly (the kernel can no longer be reached)."""

    error: str


@attrs.frozen(kw_only=True)
class KernelRunEnded:
    """KernelChannels → KernelActor: every output of the run has been sent; the actor sends the one Finished."""

    run_id: RunId
    exit_code: int


@attrs.frozen(kw_only=True)
class KernelInputRequested:
    """KernelChannels → KernelActor: the cell called input() (the prompt went out as stdout already)."""

    run_id: RunId
    is_password: bool


@attrs.frozen(kw_only=True)
class KernelCompletion:
    """KernelChannels → KernelActor: the complete_reply for one CompleteCode (empty on error)."""

    request_id: int
    matches: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Model services: HealthCheckerActor → the model server's ServiceActor (kernel_runner/model_services.py)
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StopUnhealthy:
    """HealthChecker → model server (ForwardToChild): liveness failed; stop gracefully and end with Unhealthy(detail).

    Ending with Unhealthy (not ShutdownExit) is what makes the supervisor restart the server per its policy,
    with the usual backoff and intensity limit; a plain StopChild would end it for good.
    """

    detail: str
