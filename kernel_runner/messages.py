"""Every message that crosses an actor boundary, as frozen keyword-only values. No logic but the range checks (Bounds);
a request's answer handle is only declared here (wire/answers.py makes it and builds every reply)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar, Union, dataclass_transform

import attrs

from kernel_runner.generations import Evidence
from kernel_runner.ids import Pid, RunId

_Cls = TypeVar("_Cls", bound=type)


def _values(value: Any) -> tuple[Any, ...]:
    return tuple(getattr(value, name) for name in value.__compared__)


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented  # type: ignore[no-any-return]  # lets Python try the other side, as attrs does
    return bool(_values(self) == _values(other))


def _hash(self: Any) -> int:
    return hash((self.__class__, _values(self)))


def _repr(self: Any) -> str:
    fields = ", ".join(f"{field.name}={getattr(self, field.name)!r}" for field in self.__attrs_attrs__ if field.repr)
    return f"{self.__class__.__qualname__}({fields})"


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(attrs.field,))
def frozen_value(cls: _Cls) -> _Cls:
    """`attrs.frozen(kw_only=True)`, with `==`, `hash` and `repr` shared by every class instead of generated.

    attrs compiles those methods for each class, which made defining the 50-odd messages cost ~25 ms of every
    start (docs/architecture.md §2.1); the shared ones compare, hash and print the same fields the same way (a field
    declared `eq=False`, such as a request's answer handle, is left out). Used for messages and the language table's
    values.
    """
    built: Any = attrs.frozen(kw_only=True, eq=False, repr=False)(cls)
    built.__compared__ = tuple(field.name for field in built.__attrs_attrs__ if field.eq)
    methods: dict[str, Callable[..., Any]] = {"__eq__": _eq, "__hash__": _hash, "__repr__": _repr}
    for name, method in methods.items():
        setattr(built, name, method)
    return built  # type: ignore[no-any-return]

BatchKind = Literal["clean", "build", "exec"]
RunKind = Literal["clean", "build", "exec", "code"]
StreamName = Literal["stdout", "stderr"]
StartStatus = Literal["started", "running", "failed"]

# --------------------------------------------------------------------------------------------
# The one answer of a request (docs/architecture.md §5.4): made, and every reply built, in wire/answers.py
# --------------------------------------------------------------------------------------------

_Value_contra = TypeVar("_Value_contra", contravariant=True)


class Answer(Protocol[_Value_contra]):
    """The reply-once handle a request with a reply carries: its one final answer, from whoever ends up with it.

    `send(value)` answers (a run's exit code, a completion's matches, get-apps' list); `refuse(why)` sends the
    request's default answer, the one it gets when nobody can take it (a run: a stderr line saying why and 127). Only
    the first of them goes out; a later one is dropped and logged. Both say whether they sent.
    """

    @property
    def answered(self) -> bool: ...

    def send(self, value: _Value_contra, /) -> bool: ...

    def refuse(self, why: str, /) -> bool: ...


class ServiceAnswer(Protocol):
    """The Answer of a start-service or start-model-service: `send(status, error)`; its default is `failed`."""

    @property
    def answered(self) -> bool: ...

    @property
    def at_child_start(self) -> bool:
        """An operator's start (`kernel-runner ctl start service:NAME`): the service manager answers `started` as soon
        as the supervisor started the child; an agent's start is answered by the service once it is up."""

    def send(self, status: StartStatus, error: str | None = None, /) -> bool: ...

    def refuse(self, why: str, /) -> bool: ...


class _Unrouted:
    """The answer of a request that was never given one (one made by hand, in a test): nothing goes anywhere.

    Every request from the agent gets its real one where it is routed (actors/router: route_request).
    """

    answered = False
    at_child_start = False

    def send(self, *_value: object) -> bool:
        return False

    def refuse(self, _why: str, /) -> bool:
        return False


UNROUTED = _Unrouted()


def _answer_field() -> Any:
    """A request's answer: not part of its value (equal requests compare equal whoever waits for them)."""
    return attrs.field(default=UNROUTED, eq=False, repr=False)


# --------------------------------------------------------------------------------------------
# Agent edge: requests decoded by wire.decode (docs/protocol.md §2.4)
# --------------------------------------------------------------------------------------------


@frozen_value
class RunBatch:
    kind: BatchKind
    command: str


@frozen_value
class RunCode:
    source: str


@frozen_value
class FeedInput:
    text: str


@frozen_value
class CompleteCode:
    code: str
    # The agent forwards the client's options verbatim (docs/protocol.md §3.5); kept as data, never interpreted here.
    options: Mapping[str, Any] = attrs.field(factory=dict)
    answer: Answer[tuple[str, ...]] = _answer_field()


@frozen_value
class InterruptRun:
    pass


@frozen_value
class StatusRequest:
    pass


@frozen_value
class ServiceOptions:
    arguments: Mapping[str, str | list[str] | None] | None = None
    envs: Mapping[str, str] | None = None


@frozen_value
class ServiceInfo:
    """The `start-service` payload (docs/protocol.md §6.1)."""

    name: str
    port: int | None = None
    ports: tuple[int, ...] = ()
    protocol: str = "tcp"
    options: ServiceOptions = attrs.field(factory=ServiceOptions)


@frozen_value
class StartService:
    info: ServiceInfo
    # The agent's, or an operator's (`kernel-runner ctl start service:NAME`, docs/operations.md §1: see
    # ServiceAnswer.at_child_start).
    answer: ServiceAnswer = _answer_field()


@frozen_value
class ShutdownService:
    name: str


@frozen_value
class GetApps:
    name: str | None
    answer: Answer[tuple[Mapping[str, Any], ...]] = _answer_field()


@frozen_value
class Bounds:
    """The range a number from the wire must fall in before it may become a timer or a count (docs/protocol.md §2.7).

    NaN, infinity, booleans and anything outside [low, high] are refused (`low_open`: low itself too). Usable as an
    attrs validator, so a value out of range cannot even be built.
    """

    low: float
    high: float
    low_open: bool = False
    unit: str = ""

    def problem(self, value: object) -> str | None:
        """Why `value` is not acceptable, as the rest of a sentence that starts with the field's name; None if it is."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"must be a finite number {self.describe()}, got {value!r}"
        if value < self.low or (self.low_open and value == self.low) or value > self.high:
            return f"must be {self.describe()}, got {value!r}"
        return None

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        low = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        return f"{low} and at most {self.high:g}{unit}"

    def __call__(self, _instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(f"{attribute.name} {problem}")


# docs/protocol.md §7.1: the numbers of a health check, each of which becomes a timer or bounds one. The maxima are far
# above any real model's needs; an infinite or 1e10 s wait once killed the runner's shared timer thread.
HEALTH_CHECK_BOUNDS: Mapping[str, Bounds] = {
    "max_retries": Bounds(low=1, high=1000),
    "max_wait_time": Bounds(low=0, high=600, unit="s"),
    "expected_status_code": Bounds(low=100, high=599),
    "interval": Bounds(low=0, high=3600, unit="s"),  # 0: as often as the probe floor allows (24.12's schema)
    "initial_delay": Bounds(low=0, high=86400, unit="s"),
}
PORT_BOUNDS = Bounds(low=1, high=65535)
# A service port of 0 is no port to connect to, but harmless: its start simply never sees the port open.
SERVICE_PORT_BOUNDS = Bounds(low=0, high=65535)


@frozen_value
class HealthCheck:
    """docs/protocol.md §7.1 plus the later upstream `interval`/`initial_delay` fields (docs/protocol.md §7.5)."""

    path: str
    max_retries: int = attrs.field(default=10, validator=HEALTH_CHECK_BOUNDS["max_retries"])
    max_wait_time: float = attrs.field(default=5.0, validator=HEALTH_CHECK_BOUNDS["max_wait_time"])
    expected_status_code: int = attrs.field(default=200, validator=HEALTH_CHECK_BOUNDS["expected_status_code"])
    interval: float | None = attrs.field(default=None, validator=HEALTH_CHECK_BOUNDS["interval"])
    initial_delay: float | None = attrs.field(default=None, validator=HEALTH_CHECK_BOUNDS["initial_delay"])
    # 26.4.7+: probing only when true; absent (older agents) means a health check given is a health check used.
    enable: bool | None = None

    @property
    def probing(self) -> bool:
        return self.enable is not False


@frozen_value
class PrestartActionSpec:
    action: str
    args: Mapping[str, Any] = attrs.field(factory=dict)
    ref: str | None = None


@frozen_value
class ModelServiceSpec:
    start_command: tuple[str, ...] | str
    port: int
    # For a string start_command: run as [shell, "-c", command]; None or "" splits it into words (docs/protocol.md §7.1).
    shell: str | None = "/bin/bash"
    pre_start_actions: tuple[PrestartActionSpec, ...] = ()
    health_check: HealthCheck | None = None


@frozen_value
class ModelInfo:
    name: str
    model_path: str | None = None
    service: ModelServiceSpec | None = None
    # What the payload's shape proves about the agent's release (generations.model_payload_floor), not a field of it.
    evidence: Evidence | None = None


@frozen_value
class StartModelService:
    model: ModelInfo
    answer: ServiceAnswer = _answer_field()


@frozen_value
class AgentEvent:
    """`event`: something the agent saw happen to the container, `oom` when Docker reported an out-of-memory kill
    (docs/protocol.md §9.4). No reply."""

    type: str
    data: Mapping[str, Any] = attrs.field(factory=dict)


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
    AgentEvent,
]

# --------------------------------------------------------------------------------------------
# Agent edge: what goes out (docs/protocol.md §2.5). Only the Router encodes and sends these.
# --------------------------------------------------------------------------------------------


@frozen_value
class Output:
    stream: StreamName
    data: bytes
    # True when the sender took a credit from the router's output credits; the router gives it back once sent.
    credited: bool = False


@frozen_value
class Media:
    mime: str
    data: str


@frozen_value
class Html:
    html: str


@frozen_value
class Finished:
    kind: RunKind
    exit_code: int


@frozen_value
class WaitingInput:
    is_password: bool = False


@frozen_value
class ServiceResult:
    status: StartStatus
    error: str | None = None


@frozen_value
class ModelServiceResult:
    status: StartStatus
    error: str | None = None


@frozen_value
class ModelServiceStatus:
    model_name: str
    is_healthy: bool


@frozen_value
class AppsResult:
    apps: tuple[Mapping[str, Any], ...]


@frozen_value
class CompletionResult:
    items: tuple[str, ...]


@frozen_value
class LogRecord:
    """A runner log line sent to the agent as the `log` type (only with --forward-logs=log)."""

    text: str


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
    LogRecord,
]


@frozen_value
class BadFrame:
    """A frame that could not become an AgentRequest; logged, answered when the op has a reply (docs/protocol.md §2.2)."""

    reason: str
    frame_count: int
    op: str | None
    reply: ToAgent | None = None


# --------------------------------------------------------------------------------------------
# Processes and pumps
# --------------------------------------------------------------------------------------------


@frozen_value
class ProcessExited:
    pid: Pid
    returncode: int
    signal: int | None
    at: float


@frozen_value
class PipeClosed:
    pid: Pid
    stream: StreamName


@frozen_value
class OutputSynced:
    """ProcessWatcher → owner: the output the process had written when `sync(token)` was asked has gone out."""

    pid: Pid
    token: object


@frozen_value
class RunTask:
    run_id: RunId
    kind: RunKind
    text: str
    # Its one `finished` (the exit code), sent by the language runner only (docs/architecture.md §5.2).
    answer: Answer[int] = _answer_field()


@frozen_value
class RunDone:
    """A delegate (Jupyter kernel, terminal) → language runner: the run ended; its outputs have been sent.

    The language runner sends `note` (if any) on stderr and then the run's one Finished: it is the only sender.
    """

    run_id: RunId
    exit_code: int
    note: str | None = None


# --------------------------------------------------------------------------------------------
# Terminal (git runner, docs/protocol.md §8.3): TerminalActor's helper threads and self-ticks
# --------------------------------------------------------------------------------------------


@frozen_value
class TerminalInput:
    """TermInputReceiver → TerminalActor: the first frame of one message from the terminal SUB socket."""

    data: bytes


@frozen_value
class PtyOutput:
    """PtyReader → TerminalActor: bytes the shell wrote to its pty; the actor publishes them on the PUB socket."""

    shell_id: int
    data: bytes


@frozen_value
class PtyClosed:
    """PtyReader → TerminalActor: the reader saw EOF/EIO (or was told to stop) and closed its end of the pty."""

    shell_id: int


@frozen_value
class ShellRespawnDue:
    """TerminalActor self-tick: the backoff after a shell exit has passed; start a new shell."""

    after_shell_id: int


@frozen_value
class TerminalInputFlushDue:
    """TerminalActor self-tick: the pty refused input (its buffer was full); try the pending bytes again."""


@frozen_value
class GitGraphDone:
    """GitGraphJob → TerminalActor: the result of `%show graph` (commits is None when the command failed)."""

    run_id: RunId
    exit_code: int
    commits: tuple[Mapping[str, Any], ...] | None
    stderr: bytes = b""


# --------------------------------------------------------------------------------------------
# Jupyter kernel: KernelActor and its helper threads (docs/protocol.md §4, actors/kernel.py, actors/kernel_channels.py)
# --------------------------------------------------------------------------------------------


@frozen_value
class KernelLaunched:
    """KernelStarter → KernelActor: the kernel process runs (not ready yet); its handle is in the shared launch box."""

    pid: Pid
    kernel_name: str
    connection_file: str
    interrupt_mode: Literal["signal", "message"]


@frozen_value
class KernelReady:
    """KernelChannels → KernelActor: kernel_info_reply arrived and IOPub delivers, so code can run."""

    implementation: str
    protocol_version: str
    language: str


@frozen_value
class KernelStartFailed:
    """KernelStarter/KernelChannels → KernelActor: no kernelspec, the spawn failed, or no readiness in time."""

    error: str


@frozen_value
class KernelChannelsClosed:
    """KernelChannels → KernelActor: the channel thread ended unexpectedly (the kernel can no longer be reached)."""

    error: str


@frozen_value
class KernelRunEnded:
    """KernelChannels → KernelActor: every output of the run has been sent; the actor sends the one Finished."""

    run_id: RunId
    exit_code: int


@frozen_value
class KernelInputRequested:
    """KernelChannels → KernelActor: the cell called input() (the prompt went out as stdout already)."""

    run_id: RunId
    is_password: bool


@frozen_value
class KernelCompletion:
    """KernelChannels → KernelActor: the complete_reply for one CompleteCode (empty on error)."""

    request_id: int
    matches: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Amazon Polly (vendor.aws_polly, docs/protocol.md §8.5): a PollyCall job → PollyActor (actors/polly_worker.py)
# --------------------------------------------------------------------------------------------


@frozen_value
class PollyCallSending:
    """The boto3 client is ready and the request is being sent: the actor's call deadline starts now."""

    call_id: int


@frozen_value
class PollySynthesized:
    """The call succeeded: the audio and its content type as Polly gave them."""

    call_id: int
    content_type: str
    audio: bytes


@frozen_value
class PollyCallFailed:
    """The call ended without audio (an AWS error, no boto3): `text` is the one stderr line for the user."""

    call_id: int
    exit_code: int
    text: str


@frozen_value
class PollyWorkerDied:
    """The job raised something that is not an AWS error (a bug): the actor ends the run and lets itself restart."""

    call_id: int
    error: str


# --------------------------------------------------------------------------------------------
# A service process → whoever watches it (a model service's health checker), through the child directory
# --------------------------------------------------------------------------------------------


@frozen_value
class ServiceUp:
    """The service is up: its port opened, or it has none to wait for (a model server under the spawned contract)."""

    name: str
    port: int | None


@frozen_value
class ServiceProcessEnded:
    """The service's process exited (not told when the exit was asked for)."""

    name: str
    exit_code: int
    output_tail: str


@frozen_value
class ServiceStartFailed:
    """The service could not be started at all (prestart, spawn or port wait failed)."""

    name: str
    error: str


@frozen_value
class AwaitServiceStart:
    """The service manager → a service still starting: a later start-service for it, answered once it is up.

    Its answer: `started` when the port opens, `failed` when the start fails or `within_s` passes (docs/protocol.md
    §6.2 step 2).
    """

    answer: ServiceAnswer
    within_s: float


# --------------------------------------------------------------------------------------------
# The process (SIGHUP) or an embedder → the service manager: reread the service definitions (docs/protocol.md §1.3)
# --------------------------------------------------------------------------------------------


@frozen_value
class ServiceDefinitionsReloaded:
    """What a reload changed; running services are not restarted, so a changed definition applies to the next start."""

    loaded: int
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    # Files that did not load; those whose name had a good definition before keep that one (`kept`).
    invalid: tuple[str, ...]
    kept: tuple[str, ...]
    # What is wrong with each invalid file: one line per problem, naming the file and the field at fault.
    problems: tuple[str, ...] = ()


@frozen_value
class ReloadServiceDefinitions:
    """Reread the service-defs folder; `reply`, if given, is called with the summary (from the service manager's
    thread, so it must only hand the value on)."""

    reply: Callable[[ServiceDefinitionsReloaded], None] | None = None
