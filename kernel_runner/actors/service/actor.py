"""ServiceActor: one service process: prestart, spawn, port wait, exit report, graceful stop of its whole tree.

Life of one incarnation: one `phase`, changed only through `to_phase`, which checks the edge against LIFECYCLE
and logs it (docs/architecture.md §3.4):

    PREPARING ──spawned──────────────────────> STARTING ──port open, or no port to wait for──> RUNNING
      │  │                                       │  │                                           ^  │
      │  └──nothing to run (noop, empty command)─┼──┼───────────────────────────────────────────┘  │ process exited
      │                                          │  └──port wait timed out (tree killed)──┐        v
      │                                          │ process exited before its port opened  │     EXITING
      │                                          v                                        v        │ pipes drained
      │                                       FAILING ──pipes drained (last output)──> FAILED      v
      └──prestart or spawn failed─────────────────────────────────────────────────────────┘      ENDED
                                                                                                   ^
    any phase but FAILED, ENDED ──stop requested──> STOPPING ──the process is gone, pipes drained──┘
                              (or nothing was spawned; from PREPARING: once the Preparer is back)

With health probes (docs/protocol.md §6.14), STARTING also waits, once the port opened, for the startup and
readiness probes (ServiceProbes decides; the start limit bounds the whole wait), and a liveness probe that fails
for good makes the actor ask the supervisor to restart it (RestartChild with Unhealthy): the policy decides.

The start's one answer (its `answer`, first incarnation only; none for an operator's or an intrinsic start) goes
with an edge: `started` on entering RUNNING; `failed` on entering FAILED, or on entering STOPPING before RUNNING
("the process did not start properly").
The same answer goes to later start-services that wait for this start (AwaitServiceStart, docs/protocol.md §6.2
step 2); if the agent's wait ends first, `failed` goes out at ReplyDue and the service keeps starting.
A watcher (a model's health checker) hears ServiceUp on entering RUNNING,
ServiceProcessEnded when an EXITING or FAILING process's pipes are drained, and ServiceStartFailed on entering
FAILED from anywhere else. The supervisor's view (ChildState) follows from the phase (LIFECYCLE); the base
reports it, with the pid, whenever either changes.
"""

from __future__ import annotations

import collections
import enum
import errno
import itertools
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import pykka

from kernel_runner.context import RunnerContext
from kernel_runner.excerpts import excerpt
from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    AwaitServiceStart,
    PipeClosed,
    ProcessExited,
    ServiceAnswer,
    ServiceProcessEnded,
    ServiceStartFailed,
    ServiceUp,
    StreamName,
)
from kernel_runner.observability.debug_lines import debug
from kernel_runner.probes.messages import ProbeMessage
from kernel_runner.probes.service import ProbeFailure, ProbeTally, ServiceProbePlan, ServiceProbes
from kernel_runner.procs.process import ProcessHandle, describe_returncode, stop_process, term_then_kill, watch_process
from kernel_runner.servicedefs import ServiceCommand, ServiceStartError
from kernel_runner.supervision.actor import Lifecycle, PhasedActor
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.exits import ExitReason, NormalExit, ProcessDied, ShutdownExit, StartFailed, Unhealthy
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.spec import ChildContext, ChildState, RestartChild, StopRequested

if TYPE_CHECKING:
    from loguru import Logger

TAIL_LINES = 20
PORT_PROBE_FIRST_DELAY_S = 0.002
PORT_PROBE_MAX_DELAY_S = 0.025


@attrs.frozen(kw_only=True)
class ServiceRun:
    """One service, resolved from its definition; the command itself is made by `prepare` in a helper thread."""

    name: str
    # Prestart actions plus rendering (file and process I/O, so never on the actor thread); raises ServiceStartError.
    prepare: Callable[[], ServiceCommand]
    port: int | None
    # docs/protocol.md §6.7 fix: a noop service is up at once; nothing is prepared or spawned.
    noop: bool = False
    # `started`/`failed` goes out by this time (from the start), before the agent gives up (docs/protocol.md §6.2
    # step 10); a service still opening its port then keeps starting until `start_limit_s` (from its spawn).
    reply_within_s: float = 8.0
    start_limit_s: float = 300.0
    # Who gets told when the service's process ends or its port opens (a model service's health checker).
    watcher: ChildId | None = None
    # Health probes (docs/protocol.md §6.14); None: only the process and its port are watched, as before probes.
    probes: ServiceProbePlan | None = None
    # Failed probes since the start, shared by the incarnations (the metrics' counter, docs/operations.md §5).
    tally: ProbeTally = attrs.field(factory=ProbeTally, eq=False)

    @classmethod
    def fixed(cls, *, name: str, argv: tuple[str, ...], env: Mapping[str, str], cwd: Path, port: int | None,
              **kwargs: Any) -> ServiceRun:
        """A service whose command needs no prestart (intrinsic services, tests)."""
        command = ServiceCommand(argv=argv, env=dict(env), cwd=cwd)
        return cls(name=name, prepare=lambda: command, port=port, noop=not argv, **kwargs)


class Phase(enum.Enum):
    """One incarnation's life (see the module docstring for the diagram)."""

    PREPARING = "preparing"
    """The first phase: prestart actions and rendering run in the Preparer thread; no process yet."""
    STARTING = "starting"
    """The process is spawned; its port is awaited (PortWaiter)."""
    RUNNING = "running"
    """Up: the port opened, or there is no port to wait for, or nothing to run; `started` was answered."""
    EXITING = "exiting"
    """The process exited by itself after it was up; its pipes drain before the exit is reported."""
    FAILING = "failing"
    """The process exited before it was up; its pipes drain so the `failed` reply carries its last output."""
    STOPPING = "stopping"
    """A stop was asked for: SIGTERM to the group, grace, SIGKILL to the tree (procs.stop_process), or waiting
    for the Preparer to come back; ends once nothing of the process is left."""
    FAILED = "failed"
    """Terminal: the start failed; `failed` was answered and the incarnation ends with StartFailed/ProcessDied."""
    ENDED = "ended"
    """Terminal: the incarnation ends (process exit after it was up, or a requested stop)."""


LIFECYCLE = Lifecycle(
    initial=Phase.PREPARING,
    transitions={
        Phase.PREPARING: frozenset({Phase.STARTING, Phase.RUNNING, Phase.FAILED, Phase.STOPPING}),
        Phase.STARTING: frozenset({Phase.RUNNING, Phase.FAILING, Phase.FAILED, Phase.STOPPING}),
        Phase.RUNNING: frozenset({Phase.EXITING, Phase.STOPPING}),
        Phase.EXITING: frozenset({Phase.ENDED, Phase.STOPPING}),
        Phase.FAILING: frozenset({Phase.FAILED, Phase.STOPPING}),
        Phase.STOPPING: frozenset({Phase.ENDED}),
        Phase.FAILED: frozenset(),
        Phase.ENDED: frozenset(),
    },
    # The supervisor's view of each phase; None: nothing to report (the supervisor reports the exit itself).
    child_states={
        Phase.PREPARING: ChildState.STARTING,
        Phase.STARTING: ChildState.STARTING,
        Phase.RUNNING: ChildState.RUNNING,
        Phase.EXITING: ChildState.RUNNING,
        Phase.FAILING: ChildState.STARTING,
        Phase.STOPPING: ChildState.STOPPING,
        Phase.FAILED: None,
        Phase.ENDED: None,
    },
)

# Phases in which `started` has been answered (a stop then answers nothing).
UP_PHASES = frozenset({Phase.RUNNING, Phase.EXITING})


# ---- messages private to this actor and its threads ---------------------------------------------------


@attrs.frozen(kw_only=True)
class PrepareDone:
    command: ServiceCommand | None
    error: str | None


@attrs.frozen(kw_only=True)
class PortOpened:
    port: int
    waited_s: float


@attrs.frozen(kw_only=True)
class PortWaitTimedOut:
    port: int
    waited_s: float


@attrs.frozen(kw_only=True)
class ReplyDue:
    """The agent is about to give up on the start: answer now, whatever the service is doing."""


@attrs.frozen(kw_only=True)
class StartLimitDue:
    """The port opened, but the probes the start waits for have not passed within the start limit."""


@attrs.frozen(kw_only=True)
class WaiterDue:
    """A later start-service's wait (AwaitServiceStart) is over."""

    token: int


class Preparer(threading.Thread):
    """Runs prestart actions and renders the command, then tells the actor the result."""

    def __init__(self, prepare: Callable[[], ServiceCommand], owner: pykka.ActorRef[Any]) -> None:
        super().__init__(name="Prepare", daemon=True)
        self._prepare = prepare
        self._owner = owner

    def run(self) -> None:
        command: ServiceCommand | None = None
        error: str | None = None
        try:
            command = self._prepare()
        except ServiceStartError as exc:
            error = exc.reply_text
        except Exception as exc:  # noqa: BLE001 - any failure becomes the reply's error text (docs/protocol.md §6.2 step 11)
            error = repr(exc)
        tell_if_alive(self._owner, PrepareDone(command=command, error=error))


class PortWaiter(threading.Thread):
    """Connects to 127.0.0.1:port with a short, growing pause (2 → 25 ms), so `started` follows the open within ms."""

    def __init__(self, port: int, timeout_s: float, owner: pykka.ActorRef[Any], clock: Clock) -> None:
        super().__init__(name=f"PortWaiter-{port}", daemon=True)
        self._port = port
        self._timeout_s = timeout_s
        self._owner = owner
        self._clock = clock
        self.cancelled = threading.Event()

    def run(self) -> None:
        started = self._clock.monotonic()
        deadline = started + self._timeout_s
        delay = PORT_PROBE_FIRST_DELAY_S
        while not self.cancelled.is_set():
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                self._tell(PortWaitTimedOut(port=self._port, waited_s=self._clock.monotonic() - started))
                return
            if port_is_open(self._port, timeout=min(1.0, remaining)):
                self._tell(PortOpened(port=self._port, waited_s=self._clock.monotonic() - started))
                return
            self.cancelled.wait(min(delay, max(0.0, remaining)))
            delay = min(PORT_PROBE_MAX_DELAY_S, delay * 1.5)

    def _tell(self, message: object) -> None:
        tell_if_alive(self._owner, message)


def port_is_open(port: int, *, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class OutputTail:
    """Keeps the last lines a service printed (for the failure reply) and logs each line under the service's name,
    with its stream and port as fields (flat in `--log-json`, docs/operations.md §2)."""

    def __init__(self, log: Logger, port: int | None) -> None:
        self._logs = {stream: log.bind(stream=stream, port=port) for stream in ("stdout", "stderr")}
        self._lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._lock = threading.Lock()

    def feed(self, stream: StreamName, data: bytes) -> None:
        with self._lock:
            buffered = self._partial[stream] + data
            *complete, rest = buffered.split(b"\n")
            self._partial[stream] = rest[-65536:]
            for raw in complete:
                self._add(stream, raw)

    def flush(self) -> None:
        with self._lock:
            for stream, rest in self._partial.items():
                if rest:
                    self._add(stream, rest)
                    self._partial[stream] = b""

    def _add(self, stream: str, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self._lines.append(line)
        self._logs[stream].info("{}: {}", stream, line)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self._lines)


class ServiceActor(PhasedActor[Phase]):
    """Supervises one service process; the supervisor decides about restarts, this actor about one life (Phase)."""

    # A later start-service waiting for this one must be answered even if this incarnation ends first.
    redeliverable = (AwaitServiceStart,)
    lifecycle = LIFECYCLE

    def __init__(self, *, ctx: ChildContext, runner: RunnerContext, run: ServiceRun, answer: ServiceAnswer | None) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self.run = run
        # Only the first incarnation answers the start: restarts happen when nobody is waiting for an answer.
        self._answer = answer if ctx.generation == 1 else None
        self._handle: ProcessHandle | None = None
        self._port_waiter: PortWaiter | None = None
        self._tail = OutputTail(self.log, self.run.port)
        self._command: ServiceCommand | None = None
        self._spawned_at: float | None = None
        # The process's exit status, kept until its pipes are drained (PipeClosed for each that was opened).
        self._exit: ProcessExited | None = None
        self._open_pipes = 0
        # Later start-services for this service while it starts (AwaitServiceStart), by token; each answered once.
        self._waiters: dict[int, ServiceAnswer] = {}
        self._waiter_tokens = itertools.count()
        # The health probes of this incarnation, made at the spawn (docs/protocol.md §6.14).
        self._probes: ServiceProbes | None = None

    @property
    def pid(self) -> int | None:
        return self._handle.pid if self._handle is not None else None

    def reported_pid(self) -> int | None:
        return self.pid

    # ---- life -----------------------------------------------------------------------------------
    def start_child(self) -> None:
        if self._answer is not None and not self.run.noop:
            self.schedule(self.run.reply_within_s, ReplyDue())
        if self.run.noop:
            # docs/protocol.md §6.7: a noop service has nothing to run; it is up at once and no prestart runs.
            self.log.info("noop service: nothing to spawn")
            self._become_ready("noop service")  # PREPARING -> RUNNING
            return
        Preparer(self.run.prepare, self.actor_ref).start()

    def cleanup(self) -> None:
        if self.phase in (Phase.PREPARING, Phase.STARTING, Phase.FAILING):
            # Ended before its answer (a crash, or stopped from outside): the agent still gets its one reply.
            self._reply("failed", f"the process did not start properly: {self.run.name}")
        if self._port_waiter is not None:
            self._port_waiter.cancelled.set()
        self._stop_probes()
        if self._handle is not None and self._exit is None:
            self.log.warning("killing the process tree of pid {} on the way out", self._handle.pid)
            self._handle.kill_tree()

    def handle(self, message: object) -> object:
        match message:
            case PrepareDone():
                return self._handle_prepare_done(message)
            case PortOpened():
                return self._handle_port_opened(message)
            case PortWaitTimedOut():
                return self._handle_port_wait_timed_out(message)
            case ReplyDue():
                return self._handle_reply_due()
            case ProbeMessage():
                return self._handle_probe_message(message)
            case StartLimitDue():
                return self._handle_start_limit_due()
            case AwaitServiceStart():
                return self._handle_await_start(message)
            case WaiterDue():
                return self._handle_waiter_due(message)
            case ProcessExited():
                return self._handle_process_exited(message)
            case PipeClosed():
                return self._handle_pipe_closed(message)
            case _:
                return super().handle(message)

    def _conclude(self, reason: ExitReason, why: str) -> None:
        """-> ENDED: this incarnation is over (not a failed start); the supervisor decides what comes next."""
        self.to_phase(Phase.ENDED, why)
        self.finish(reason)

    # ---- start ------------------------------------------------------------------------------------
    def _handle_prepare_done(self, message: PrepareDone) -> None:
        if self.phase is Phase.STOPPING:
            # STOPPING -> ENDED: the stop came while the prestart ran (answered then); nothing was spawned.
            self._conclude(ShutdownExit(), "the Preparer is back after a stop")
            return
        if message.command is None:
            error = message.error or "prestart failed"
            self.log.error("prestart failed: {}", error)
            self._fail_start(error, StartFailed(error=error))  # PREPARING -> FAILED
            return
        self._command = message.command
        if not message.command.argv:
            self.log.info("nothing to run: the command is empty")
            self._become_ready("empty command")  # PREPARING -> RUNNING
            return
        self._spawn(message.command)

    def _spawn(self, command: ServiceCommand) -> None:
        argv = command.argv
        # A failure here is PREPARING -> FAILED.
        try:
            handle = ProcessHandle.spawn(
                argv, env=command.env, cwd=command.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, dies_with_spawning_thread=True,
            )
        except PermissionError:
            self._fail_start(f"the target file is not executable: {argv[0]}", StartFailed(error="not executable"))
            return
        except FileNotFoundError:
            # docs/protocol.md §6.2 step 11: the same text whether the program or the working directory is missing.
            self._fail_start(f"the executable file is not found: {argv[0]}", StartFailed(error="not found"))
            return
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:
                self._fail_start(f"the target file is not executable: {argv[0]}", StartFailed(error="not executable"))
            else:
                self._fail_start(repr(exc), StartFailed(error=repr(exc)))
            return
        except ValueError as exc:  # a NUL byte in an argument or the environment (from a definition file): no crash
            self._fail_start(f"cannot start {argv[0]}: {exc}", StartFailed(error=repr(exc)))
            return
        self._handle = handle
        self._spawned_at = self.ctx.clock.monotonic()
        self.log = self.log.bind(pid=handle.pid)
        self._tail = OutputTail(self.log, self.run.port)
        # A model's argv came over the wire (docs/protocol.md §2.8): the log quotes a bounded prefix of it.
        self.log.info("pid {} argv={} cwd={}", handle.pid, excerpt(" ".join(argv), 1000), command.cwd)
        self.to_phase(Phase.STARTING, f"spawned pid {handle.pid}")  # PREPARING -> STARTING
        self._open_pipes = sum(stream is not None for stream in (handle.popen.stdout, handle.popen.stderr))
        watch_process(handle, self.actor_ref, sink=self._tail.feed, clock=self.ctx.clock)
        if self.run.probes is not None:
            self._probes = ServiceProbes(
                self.run.probes, tally=self.run.tally, owner=self.actor_ref, schedule=self.schedule,
                clock=self.ctx.clock, log=lambda: self.log, name=self.run.name, on_ready=self._probes_passed,
                on_failed=self._probes_failed, on_change=self.update_info,
            )
        if self.run.port is None:
            self._up_to_port("no port to wait for")
            return
        limit_s = max(self.run.start_limit_s, self.run.reply_within_s)
        self._port_waiter = PortWaiter(self.run.port, limit_s, self.actor_ref, self.ctx.clock)
        self._port_waiter.start()

    def _handle_port_opened(self, message: PortOpened) -> None:
        if self.phase is not Phase.STARTING:
            return  # the process exited or a stop came first; the waiter was cancelled too late
        self.log.info("port-open port={} after {:.3f}s", message.port, message.waited_s)
        self._up_to_port(f"port {message.port} open")

    def _up_to_port(self, why: str) -> None:
        """The port opened, or there is none to wait for: up, unless probes still decide (then they call back)."""
        if self._probes is None:
            self._become_ready(why)  # STARTING -> RUNNING
            return
        self._probes.begin()  # calls _probes_passed at once when nothing but the port gates the start
        if self.phase is Phase.STARTING and self._spawned_at is not None:
            limit_s = max(self.run.start_limit_s, self.run.reply_within_s)
            self.schedule(limit_s - (self.ctx.clock.monotonic() - self._spawned_at), StartLimitDue())

    def _become_ready(self, why: str) -> None:
        self.to_phase(Phase.RUNNING, why)
        self.update_info({"name": self.run.name, "port": self.run.port})
        if self.run.watcher is not None:
            self._tell_watcher(ServiceUp(name=self.run.name, port=self.run.port))
        self._reply("started", None)

    def _handle_port_wait_timed_out(self, message: PortWaitTimedOut) -> None:
        if self.phase is not Phase.STARTING:
            return  # the process exited or a stop came first
        self.log.error("port {} did not open within {:.1f}s", message.port, message.waited_s)
        # STARTING -> FAILED
        self._fail_start(f"opening the service port timed out: {self.run.name}", StartFailed(error="port timed out"))

    def _fail_start(self, error: str, reason: StartFailed | ProcessDied) -> None:
        """Answered `failed`; whether it is tried again is the supervisor's call (its spec: not after a first start)."""
        self._stop_probes()
        before = self.phase
        self.to_phase(Phase.FAILED, error.partition("\n")[0])
        self._reply("failed", error)
        if self.run.watcher is not None and before is not Phase.FAILING:  # FAILING told ServiceProcessEnded already
            self._tell_watcher(ServiceStartFailed(name=self.run.name, error=error))
        if before is Phase.STARTING:
            assert self._handle is not None
            self._handle.kill_tree()
        self.finish(reason)

    # ---- exit ---------------------------------------------------------------------------------------
    def _handle_process_exited(self, message: ProcessExited) -> None:
        self._exit = message
        if self._port_waiter is not None:
            self._port_waiter.cancelled.set()
        self._stop_probes()
        # Anything left in the group (grandchildren) goes with the service: no orphans (docs/protocol.md §6.13).
        if self._handle is not None:
            self._handle.kill_tree()
        why = f"pid {message.pid} exited ({message.returncode})"
        if self.phase is Phase.STARTING:
            self.to_phase(Phase.FAILING, why)  # STARTING -> FAILING
        elif self.phase is not Phase.STOPPING:
            self.to_phase(Phase.EXITING, why)  # RUNNING -> EXITING (from anywhere else: InvalidTransition)
        if self._open_pipes == 0:
            self._after_exit()

    def _handle_pipe_closed(self, message: PipeClosed) -> None:
        self._open_pipes -= 1
        if self._open_pipes == 0 and self._exit is not None:
            self._after_exit()

    def _after_exit(self) -> None:
        """The process has exited and its pipes are drained: its whole output is in the tail."""
        exit_msg = self._exit
        assert exit_msg is not None
        self._tail.flush()
        code, sig = describe_returncode(exit_msg.returncode)
        uptime = exit_msg.at - (self._spawned_at or exit_msg.at)
        how = f"signal {sig}" if sig is not None else f"code {code}"
        debug(self.log, "the process ended ({}) after {:.1f}s", how, uptime)  # the supervisor logs the exit, once
        if self.phase is Phase.STOPPING:
            # A stop was asked for (shutdown-service, runner shutdown, the watcher's own restart): nothing to report.
            self._conclude(ShutdownExit(code=code, signal=sig), f"stopped; exited {how}")  # STOPPING -> ENDED
            return
        if self.run.watcher is not None:
            self._tell_watcher(ServiceProcessEnded(name=self.run.name, exit_code=code, output_tail=self._tail.text()))
        if self.phase is Phase.FAILING:
            tail = self._tail.text()
            error = f"the service exited before its port opened ({how})"
            if tail:
                error += f"; last output:\n{tail}"
            self._fail_start(error, ProcessDied(code=code, signal=sig))  # FAILING -> FAILED
            return
        # EXITING -> ENDED
        self._conclude(ProcessDied(code=code, signal=sig) if (code != 0 or sig is not None) else NormalExit(),
                       f"exited {how}")

    # ---- stop ------------------------------------------------------------------------------------
    def request_stop(self, message: StopRequested) -> None:
        before = self.phase
        if before is Phase.STOPPING:
            debug(self.log, "stop requested again ({}); the stop under way goes on", message.reason)
            return
        if self._port_waiter is not None:
            self._port_waiter.cancelled.set()
        self._stop_probes()  # nothing is probed once a stop was asked for
        self.to_phase(Phase.STOPPING, message.reason)  # PREPARING|STARTING|RUNNING|EXITING|FAILING -> STOPPING
        if before not in UP_PHASES:
            program = self._command.argv[0] if self._command is not None and self._command.argv else self.run.name
            self._reply("failed", f"the process did not start properly: {program}")
        if before is Phase.PREPARING:
            return  # the prestart thread is still out; PrepareDone ends us when it is back
        if before in (Phase.EXITING, Phase.FAILING):
            return  # the process is gone; the last PipeClosed ends us
        if self._handle is None:
            self._conclude(ShutdownExit(), "nothing was spawned")  # STOPPING -> ENDED
            return
        # The supervisor's `stopping` event says that it stops and why (logged once); this line says how.
        self.log.info("SIGTERM to group {}; SIGKILL to its tree after {:.1f}s", self._handle.pid, message.grace_s)
        stop_process(self._handle, term_then_kill(message.grace_s), log=self.log, what=f"service {self.run.name}")

    # ---- health probes (docs/protocol.md §6.14) ---------------------------------------------------------------
    def _handle_probe_message(self, message: ProbeMessage) -> None:
        if self._probes is not None:
            self._probes.handle(message)

    def _probes_passed(self, why: str) -> None:
        if self.phase is Phase.STARTING:
            self._become_ready(why)  # STARTING -> RUNNING

    def _probes_failed(self, failure: ProbeFailure) -> None:
        if self.phase is Phase.STARTING:
            # STARTING -> FAILED: like a port that never opens; a restart that fails so is the policy's to judge.
            self._fail_start(f"the service failed its {failure.probe} probe before it was ready: {failure.detail}",
                             StartFailed(error=f"{failure.probe} probe failed"))
            return
        if self.phase is Phase.RUNNING:
            # Never this actor's own decision: the supervisor's policy restarts it (backoff, restart budget, FATAL).
            self.log.warning("asking the supervisor to restart {} ({})", self.child_id, failure.detail)
            tell_if_alive(self.ctx.supervisor, RestartChild(child_id=self.child_id, reason=Unhealthy(detail=failure.detail)))

    def _handle_start_limit_due(self) -> None:
        if self.phase is not Phase.STARTING:
            return
        self.log.error("not ready within {:.1f}s of its spawn", max(self.run.start_limit_s, self.run.reply_within_s))
        self._fail_start(self._timeout_text(), StartFailed(error="not ready in time"))  # STARTING -> FAILED

    def _stop_probes(self) -> None:
        if self._probes is not None:
            self._probes.stop()

    # ---- replies ------------------------------------------------------------------------------------
    def _handle_reply_due(self) -> None:
        if self._answer is None or self._answer.answered or self.phase not in (Phase.PREPARING, Phase.STARTING):
            return
        waiting = self._probes.waiting_for() if self._probes is not None else None
        self.log.warning(
            "{} after {:.1f}s: answered `failed` before the agent gives up; the service keeps starting (up to {:.0f}s), "
            "and a later start-service answers once it is up",
            f"not ready ({waiting})" if waiting else f"port {self.run.port} not open", self.run.reply_within_s,
            max(self.run.start_limit_s, self.run.reply_within_s),
        )
        self._reply("failed", self._timeout_text(), waiters=False)

    def _timeout_text(self) -> str:
        waiting = self._probes.waiting_for() if self._probes is not None else None
        if waiting is not None:
            return f"the service did not become ready in time: {self.run.name}: {waiting}"
        return f"opening the service port timed out: {self.run.name}"  # upstream's text (docs/protocol.md §6.2)

    def _handle_await_start(self, message: AwaitServiceStart) -> None:
        """A later start-service for this service (docs/protocol.md §6.2 step 2): the same process, never a second."""
        if self.phase in UP_PHASES:
            message.answer.send("started")
        elif self.phase in (Phase.PREPARING, Phase.STARTING, Phase.FAILING):
            token = next(self._waiter_tokens)
            self._waiters[token] = message.answer
            self.log.info("another start-service waits up to {:.1f}s for this start", message.within_s)
            self.schedule(message.within_s, WaiterDue(token=token))
        else:
            message.answer.send("failed", f"the process did not start properly: {self.run.name}")

    def _handle_waiter_due(self, message: WaiterDue) -> None:
        answer = self._waiters.pop(message.token, None)
        if answer is not None:
            answer.send("failed", self._timeout_text())

    def _reply(self, status: Literal["started", "failed"], error: str | None, *, waiters: bool = True) -> None:
        """The one answer for the start that made this service (once answered, later calls do nothing), and, unless
        only the agent's wait is over, the same answer to every later start-service waiting for it."""
        if waiters:
            pending, self._waiters = self._waiters, {}
            for answer in pending.values():
                answer.send(status, error)
        if self._answer is None or self._answer.answered:
            return
        self._answer.send(status, error)
        if status == "started":
            self.log.info("Service {} has started (pid: {}, port: {})", self.run.name, self.pid, self.run.port)

    def _tell_watcher(self, message: object) -> None:
        assert self.run.watcher is not None
        self.tell_child(self.run.watcher, message)
