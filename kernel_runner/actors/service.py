"""ServiceActor: one service process: prestart, spawn, port wait, exit report, graceful stop of its whole tree."""

from __future__ import annotations

import collections
import errno
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import pykka

from kernel_runner.actors.base import SupervisedActor
from kernel_runner.clock import Clock
from kernel_runner.context import RunnerContext
from kernel_runner.exits import NormalExit, ProcessDied, ShutdownExit, StartFailed
from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    ModelServiceResult,
    PipeClosed,
    ProcessExited,
    ServicePortOpened,
    ServiceProcessEnded,
    ServiceResult,
    ServiceStartFailed,
    StreamName,
)
from kernel_runner.procs import ExitWatcher, PipePump, ProcessHandle, describe_returncode, stop_process, term_then_kill
from kernel_runner.refs import tell_if_alive
from kernel_runner.servicedefs import ServiceCommand, ServiceStartError
from kernel_runner.supervision import ChildContext, ChildState, StopRequested

TAIL_LINES = 20
PORT_PROBE_FIRST_DELAY_S = 0.002
PORT_PROBE_MAX_DELAY_S = 0.025

ReplyKind = Literal["service", "model", "none"]


@attrs.frozen(kw_only=True)
class ServiceRun:
    """One service, resolved from its definition; the command itself is made by `prepare` in a helper thread."""

    name: str
    # Prestart actions plus rendering (file and process I/O, so never on the actor thread); raises ServiceStartError.
    prepare: Callable[[], ServiceCommand]
    port: int | None
    # docs/protocol.md §6.7 fix: a noop service is up at once; nothing is prepared or spawned.
    noop: bool = False
    launch_timeout_s: float = 8.0
    # Who gets told when the service's process ends or its port opens (a model service's health checker).
    watcher: ChildId | None = None

    @classmethod
    def fixed(cls, *, name: str, argv: tuple[str, ...], env: Mapping[str, str], cwd: Path, port: int | None,
              **kwargs: Any) -> ServiceRun:
        """A service whose command needs no prestart (intrinsic services, tests)."""
        command = ServiceCommand(argv=argv, env=dict(env), cwd=cwd)
        return cls(name=name, prepare=lambda: command, port=port, noop=not argv, **kwargs)


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
    """Keeps the last lines a service printed (for the failure reply) and logs each line under the service's name."""

    def __init__(self, log: Any) -> None:
        self._log = log
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
        self._log.info("{}: {}", stream, line)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self._lines)


class ServiceActor(SupervisedActor):
    """Supervises one service process; the supervisor decides about restarts, this actor about one life.

    Life: [prestart] → spawned → port-open (RUNNING, reply `started`) → exited (report) | stop requested
    (SIGTERM to the group, grace, SIGKILL to the tree).
    """

    def __init__(self, *, ctx: ChildContext, runner: RunnerContext, run: ServiceRun, reply: ReplyKind) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self.run = run
        # Only the first incarnation answers the agent: restarts happen when nobody is waiting for a reply.
        self.reply_kind: ReplyKind = reply if ctx.generation == 1 else "none"
        self._handle: ProcessHandle | None = None
        self._port_waiter: PortWaiter | None = None
        self._tail = OutputTail(self.log)
        self._command: ServiceCommand | None = None
        self._spawned_at: float | None = None
        self._ready = False
        self._exit: ProcessExited | None = None
        self._open_pipes = 0
        self._stopping = False
        self._replied = False

    # ---- life -----------------------------------------------------------------------------------
    def start_child(self) -> None:
        self.set_state(ChildState.STARTING)
        if self.run.noop:
            # docs/protocol.md §6.7: a noop service has nothing to run; it is up at once and no prestart runs.
            self.log.info("noop service: nothing to spawn")
            self._become_ready()
            return
        Preparer(self.run.prepare, self.actor_ref).start()

    def cleanup(self) -> None:
        if self._port_waiter is not None:
            self._port_waiter.cancelled.set()
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
            case ProcessExited():
                return self._handle_process_exited(message)
            case PipeClosed():
                return self._handle_pipe_closed(message)
            case _:
                return super().handle(message)

    # ---- start ------------------------------------------------------------------------------------
    def _handle_prepare_done(self, message: PrepareDone) -> None:
        if self._stopping:
            self.finish(ShutdownExit())
            return
        if message.command is None:
            error = message.error or "prestart failed"
            self.log.error("prestart failed: {}", error)
            self._fail_start(error, StartFailed(error=error))
            return
        self._command = message.command
        if not message.command.argv:
            self.log.info("nothing to run: the command is empty")
            self._become_ready()
            return
        self._spawn(message.command)

    def _spawn(self, command: ServiceCommand) -> None:
        argv = command.argv
        try:
            handle = ProcessHandle.spawn(
                argv, env=command.env, cwd=command.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
        self._handle = handle
        self._spawned_at = self.ctx.clock.monotonic()
        self.log = self.log.bind(pid=handle.pid)
        self._tail = OutputTail(self.log)
        self.log.info("spawned pid={} argv={} cwd={}", handle.pid, list(argv), command.cwd)
        self.set_state(ChildState.STARTING, pid=handle.pid)
        for stream, name in ((handle.popen.stdout, "stdout"), (handle.popen.stderr, "stderr")):
            if stream is not None:
                self._open_pipes += 1
                PipePump(stream, name=name, pid=handle.pid, sink=self._tail.feed, owner=self.actor_ref).start()  # type: ignore[arg-type]
        ExitWatcher(handle, self.actor_ref, clock=self.ctx.clock).start()
        if self.run.port is None:
            self._become_ready()
            return
        self._port_waiter = PortWaiter(self.run.port, self.run.launch_timeout_s, self.actor_ref, self.ctx.clock)
        self._port_waiter.start()

    def _handle_port_opened(self, message: PortOpened) -> None:
        if self._exit is not None or self._stopping:
            return
        self.log.info("port-open port={} after {:.3f}s", message.port, message.waited_s)
        self._become_ready()

    def _become_ready(self) -> None:
        self._ready = True
        pid = self._handle.pid if self._handle is not None else None
        self.set_state(ChildState.RUNNING, pid=pid)
        self.update_info({"name": self.run.name, "port": self.run.port})
        if self.run.watcher is not None and self.run.port is not None:
            self._tell_watcher(ServicePortOpened(name=self.run.name, port=self.run.port))
        self._reply("started", None)

    def _handle_port_wait_timed_out(self, message: PortWaitTimedOut) -> None:
        if self._exit is not None or self._stopping:
            return
        self.log.error("port {} did not open within {:.1f}s", message.port, message.waited_s)
        self._fail_start(f"opening the service port timed out: {self.run.name}", StartFailed(error="port timed out"))

    def _fail_start(self, error: str, reason: StartFailed | ProcessDied) -> None:
        """Answered `failed`; whether it is tried again is the supervisor's call (its spec: not after a first start)."""
        self._reply("failed", error)
        if self.run.watcher is not None and self._exit is None:  # an exit was told as ServiceProcessEnded already
            self._tell_watcher(ServiceStartFailed(name=self.run.name, error=error))
        if self._handle is not None and self._exit is None:
            self._handle.kill_tree()
        self.finish(reason)

    # ---- exit ---------------------------------------------------------------------------------------
    def _handle_process_exited(self, message: ProcessExited) -> None:
        self._exit = message
        if self._port_waiter is not None:
            self._port_waiter.cancelled.set()
        # Anything left in the group (grandchildren) goes with the service: no orphans (docs/protocol.md §6.13).
        if self._handle is not None:
            self._handle.kill_tree()
        if self._open_pipes == 0:
            self._after_exit()

    def _handle_pipe_closed(self, message: PipeClosed) -> None:
        self._open_pipes -= 1
        if self._open_pipes == 0 and self._exit is not None:
            self._after_exit()

    def _after_exit(self) -> None:
        exit_msg = self._exit
        assert exit_msg is not None
        self._tail.flush()
        code, sig = describe_returncode(exit_msg.returncode)
        uptime = exit_msg.at - (self._spawned_at or exit_msg.at)
        how = f"signal {sig}" if sig is not None else f"code {code}"
        self.log.info("exited {} after {:.1f}s", how, uptime)
        if self.run.watcher is not None and not self._stopping:
            # A stop was asked for (shutdown-service, runner shutdown, the watcher's own restart): nothing to report.
            self._tell_watcher(ServiceProcessEnded(name=self.run.name, exit_code=code, output_tail=self._tail.text()))
        if self._stopping:
            self.finish(ShutdownExit())
            return
        if not self._ready:
            tail = self._tail.text()
            error = f"the service exited before its port opened ({how})"
            if tail:
                error += f"; last output:\n{tail}"
            self._fail_start(error, ProcessDied(code=code, signal=sig))
            return
        self.finish(ProcessDied(code=code, signal=sig) if (code != 0 or sig is not None) else NormalExit())

    # ---- stop ------------------------------------------------------------------------------------
    def request_stop(self, message: StopRequested) -> None:
        self._stopping = True
        if self._port_waiter is not None:
            self._port_waiter.cancelled.set()
        program = self._command.argv[0] if self._command is not None and self._command.argv else self.run.name
        preparing = self._command is None and not self.run.noop and not self._replied
        self._reply("failed", f"the process did not start properly: {program}")
        if preparing:
            return  # the prestart thread is still out; PrepareDone finishes us when it is back
        if self._handle is None or self._exit is not None:
            if self._exit is None or self._open_pipes == 0:
                self.finish(ShutdownExit())
            return
        self.log.info("stopping ({}): SIGTERM to group {}, grace {:.1f}s", message.reason, self._handle.pid, message.grace_s)
        self.set_state(ChildState.STOPPING, pid=self._handle.pid)
        stop_process(self._handle, term_then_kill(message.grace_s), log=self.log, what=f"service {self.run.name}")

    # ---- replies ------------------------------------------------------------------------------------
    def _reply(self, status: Literal["started", "failed"], error: str | None) -> None:
        if self._replied or self.reply_kind == "none":
            return
        self._replied = True
        if self.reply_kind == "service":
            self._runner.router.tell(ServiceResult(status=status, error=error))
        else:
            self._runner.router.tell(ModelServiceResult(status=status, error=error))
        if status == "started":
            self.log.info("Service {} has started (pid: {}, port: {})", self.run.name,
                          self._handle.pid if self._handle else None, self.run.port)

    def _tell_watcher(self, message: object) -> None:
        assert self.run.watcher is not None
        self.tell_child(self.run.watcher, message)
