"""What each control socket command does and answers (docs/operations.md §1.2, §1.3); the socket side is `server`.

Answered from what the runner already publishes without being asked (the tree snapshot on the status board, the
start-up gate, the child log book). Commands go to the supervisor and the service manager by `tell`; waiting for their
outcome (a restarted child running again) is a bounded look at the published tree, never an ask.
"""

from __future__ import annotations

import collections
import datetime
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from loguru import logger

import kernel_runner
from kernel_runner.control.protocol import COMMANDS, DEFAULT_TAIL_LINES, MAX_WAIT_S
from kernel_runner.ids import LANG_CHILD, ROUTER_CHILD, SERVICES_CHILD, ChildId
from kernel_runner.messages import ServiceInfo, ServiceResult, StartService
from kernel_runner.observability.childlog import LINES_PER_CHILD, ChildLogBook
from kernel_runner.procs.wakeup import WakeupPipe
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.exits import RestartRequested
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.spec import ChildInfo, ChildState, RestartChild, StopChild, TreeSnapshot
from kernel_runner.wire.answers import operator_start_answer

if TYPE_CHECKING:
    import pykka

    from kernel_runner.config import RunnerConfig
    from kernel_runner.context import RunnerContext
    from kernel_runner.messages import ServiceDefinitionsReloaded
    from kernel_runner.wire.status import StatusBoard


class Ports(Protocol):
    @property
    def port_in(self) -> int: ...

    @property
    def port_out(self) -> int: ...


class RunnerHandle(Protocol):
    """What the control socket needs of a running runner. runtime.root.RunnerHandle is one; a Protocol, so control/
    never imports the composition root that starts it (docs/architecture.md §2)."""

    @property
    def config(self) -> RunnerConfig: ...

    @property
    def runner(self) -> RunnerContext: ...

    @property
    def ports(self) -> Ports: ...

    @property
    def supervisor(self) -> pykka.ActorRef[Any]: ...

    @property
    def board(self) -> StatusBoard: ...

    @property
    def log_book(self) -> ChildLogBook: ...

    def tell_child(self, child_id: ChildId, message: object) -> None: ...

    def reload_service_definitions(self, timeout: float | None = None) -> ServiceDefinitionsReloaded | None: ...

T = TypeVar("T")
Reply = dict[str, Any]

DEFAULT_WAIT_S = 10.0  # how long start/stop/restart/reload wait for the outcome unless the request says
FOLLOW_BACKLOG = 10_000  # lines queued for a `tail -f` reader slower than the child's logging; beyond, dropped
BY_HAND = "by hand (kernel-runner ctl)"
# `start` of a child in one of these answers `already started` (supervisorctl's answer), exit 0.
UP_STATES = frozenset({ChildState.RUNNING, ChildState.STARTING})


class RequestError(Exception):
    """A request that cannot be done; its text is the error reply."""


class Following:
    """A `tail -f` under way: the backlog (`first`), then each new line as it is logged, queued here until the
    connection's thread sends them (`pending`). `close` ends it."""

    def __init__(self, book: ChildLogBook, child_id: ChildId, lines: int) -> None:
        self._queue: collections.deque[str] = collections.deque()
        self._dropped = 0
        self._wakeup = WakeupPipe()
        backlog, self._unfollow = book.follow(child_id, self._on_line, lines=lines)
        self.first: Reply = {"ok": True, "child": child_id, "lines": backlog, "following": True}

    @property
    def fd(self) -> int:
        """Readable when lines are pending (poll it with the connection)."""
        return self._wakeup.fd

    def _on_line(self, line: str) -> None:  # in the logging thread: queue and wake, never block (nor log)
        if len(self._queue) < FOLLOW_BACKLOG:
            self._queue.append(line)
        else:
            self._dropped += 1
        self._wakeup.wake()

    def pending(self) -> list[Reply]:
        """One reply per line logged since the last call, then how many were dropped (if any)."""
        self._wakeup.drain()
        replies = []
        while self._queue:
            replies.append({"ok": True, "line": self._queue.popleft()})
        if self._dropped:
            replies.append({"ok": True, "dropped": self._dropped})
            self._dropped = 0
        return replies

    def close(self) -> None:
        self._unfollow()
        self._wakeup.close()


Handler = Callable[[dict[str, Any]], Reply | Following]


class ControlCommands:
    """The command table (`table`): each handler takes a request's arguments and returns its reply, a Following for
    `tail -f`, or raises RequestError. `closing` set (the server stops) ends any wait for an outcome."""

    def __init__(self, handle: RunnerHandle, *, socket_path: Path, delegate: ChildId | None, clock: Clock,
                 closing: threading.Event) -> None:
        self._handle = handle
        self._socket_path = socket_path
        self._clock = clock
        self._closing = closing
        # Children the runner cannot work without: restarted by hand, never stopped by hand.
        self._core = frozenset(c for c in (ROUTER_CHILD, LANG_CHILD, SERVICES_CHILD, delegate) if c is not None)
        self._ready_children = tuple(c for c in (ROUTER_CHILD, LANG_CHILD, delegate) if c is not None)
        self.table: dict[str, Handler] = {
            "status": self._status, "start": self._start, "stop": self._stop, "restart": self._restart,
            "signal": self._signal, "tail": self._tail, "ready": self._ready, "reload": self._reload,
            "version": self._version,
        }
        assert tuple(self.table) == COMMANDS

    # ---- what the runner publishes ----------------------------------------------------------------------------------
    def _snapshot(self) -> TreeSnapshot:
        return self._handle.board.snapshot

    def _existing(self, child_id: ChildId) -> ChildInfo:
        child = self._snapshot().get(child_id)
        if child is None:
            raise RequestError(f"no child {child_id} (`kernel-runner ctl status` lists them)")
        return child

    def _wait_for(self, found: Callable[[TreeSnapshot], T | None], timeout: float) -> T | None:
        """Look at the published tree on each change until `found` returns something, within `timeout` (a stop
        ends it early)."""
        value = self._handle.board.wait_for(found, timeout, abandon=self._closing)
        if value is None and self._closing.is_set():
            raise RequestError("the runner is stopping")
        return value

    def _not_ready_because(self) -> list[str]:
        """Why the runner is not ready yet (empty: it is): the condition of RunnerHandle.wait_ready(kernel=True),
        plus the router and the language runner running."""
        why = [] if self._handle.runner.gate.is_open else ["start-up is not done (bootstrap.sh, intrinsic services)"]
        snapshot = self._snapshot()
        for child_id in self._ready_children:
            child = snapshot.get(child_id)
            if child is None or child.state is not ChildState.RUNNING:
                why.append(f"{child_id} is {child.state.value if child else 'not started yet'}")
        return why

    def _tell_supervisor(self, message: object) -> None:
        if not tell_if_alive(self._handle.supervisor, message):
            raise RequestError("the runner is stopping")

    def _describe(self, child_id: ChildId) -> str:
        """Where a child is now, for an error line: its state and last exit, or its last log line once it is gone."""
        child = self._snapshot().get(child_id)
        if child is not None:
            exit_part = f", last exit: {child.last_exit}" if child.last_exit else ""
            return f"it is {child.state.value} (generation {child.generation}{exit_part})"
        last = self._handle.log_book.tail(child_id, 1)
        return f"it is gone{'; last log line: ' + last[0] if last else ''}"

    # ---- commands ---------------------------------------------------------------------------------------------------
    def _status(self, args: dict[str, Any]) -> Reply:
        names = _names_arg(args)
        snapshot = self._snapshot()
        now, wall_now = self._clock.monotonic(), time.time()
        rows = {child.child_id: _child_row(child, now, wall_now) for child in snapshot.children}
        top: list[dict[str, Any]] = []
        unknown: list[str] = []
        if names:  # supervisorctl's `status NAME...`: just those rows, in the order asked, none nested
            top = [rows[name] for name in names if name in rows]
            unknown = [name for name in names if name not in rows]
        else:
            for child in snapshot.children:
                parent = child.binds_to
                home = rows[parent]["children"] if parent is not None and parent in rows and \
                    parent != child.child_id else top
                home.append(rows[child.child_id])
        why = self._not_ready_because()
        config = self._handle.config
        runner = {"lang": config.lang, "pid": os.getpid(), "version": kernel_runner.__version__, "ready": not why,
                  "not_ready": why, "ports": {"in": self._handle.ports.port_in, "out": self._handle.ports.port_out},
                  "control_socket": str(self._socket_path),
                  # As it was started: `ps` shows the process title instead (docs/protocol.md §9.3).
                  "command": list(sys.orig_argv)}
        return {"ok": True, "runner": runner, "children": top, "unknown": unknown}

    def _ready(self, _args: dict[str, Any]) -> Reply:
        why = self._not_ready_because()
        return {"ok": True, "ready": not why, "not_ready": why}

    def _version(self, _args: dict[str, Any]) -> Reply:
        return {"ok": True, "version": kernel_runner.__version__, "lang": self._handle.config.lang, "pid": os.getpid(),
                "python": platform.python_version()}

    def _restart(self, args: dict[str, Any]) -> Reply:
        child = self._existing(_child_arg(args))
        # supervisorctl's restart of a stopped process starts it.
        action = "started" if child.state is ChildState.STOPPED else "restarted"
        return self._restart_by_hand(child, _wait_arg(args), action=action)

    def _start(self, args: dict[str, Any]) -> Reply:
        child_id = _child_arg(args)
        port = _port_arg(args)
        child = self._snapshot().get(child_id)
        if child is not None and child.state in UP_STATES:
            return {"ok": True, "child": child_id, "action": "already-started", "state": child.state.value,
                    "generation": child.generation, "pid": child.pid}
        # A STOPPED row starts again as it was (its port, its options), unless a service is given another port:
        # then, as a service that is not in the tree, from its definition.
        new_port = child is not None and child.state is ChildState.STOPPED and child_id.startswith("service:") and \
            port is not None and child.extra.get("port") != port
        if child is None or new_port:
            if child_id.startswith("service:"):
                return self._start_service(child_id, port, _wait_arg(args))
            raise RequestError(f"no child {child_id} (`kernel-runner ctl status` lists them; `service:NAME` starts "
                               "a service from its definition)")
        return self._restart_by_hand(child, _wait_arg(args), action="started")

    def _restart_by_hand(self, child: ChildInfo, wait_s: float, *, action: str) -> Reply:
        """Restart now, logged as by hand and not counted towards give-up; answered once the next generation runs."""
        if child.state is ChildState.STOPPING:
            raise RequestError(f"{child.child_id} is stopping; try again once it has stopped")
        self._tell_supervisor(RestartChild(child_id=child.child_id, reason=RestartRequested(why=BY_HAND), by_hand=True))

        def running_again(snapshot: TreeSnapshot) -> ChildInfo | None:
            now = snapshot.get(child.child_id)
            return now if now is not None and now.generation > child.generation and \
                now.state is ChildState.RUNNING else None

        back = self._wait_for(running_again, wait_s)
        if back is None:
            raise RequestError(f"{child.child_id} is not running again within {wait_s:g} s: "
                               f"{self._describe(child.child_id)}")
        return {"ok": True, "child": child.child_id, "action": action, "state": back.state.value,
                "generation": back.generation, "pid": back.pid}

    def _start_service(self, child_id: ChildId, port: int | None, wait_s: float) -> Reply:
        """A service from its definition, through the service manager (as `start-service` would, but the answers
        come back here instead of going to the agent)."""
        name = child_id.removeprefix("service:")
        if port is None:  # a definition's command may name {ports[0]}: without a port its prestart would fail
            raise RequestError(f"{child_id} is not in the tree, so there is no port of its last run to reuse: give "
                               f"it one (`kernel-runner ctl start {child_id} --port N`)")
        deadline = time.monotonic() + wait_s
        answered = threading.Event()
        answers: list[ServiceResult] = []

        def reply(result: ServiceResult) -> None:  # in the service manager's thread: hand the value on, nothing more
            answers.append(result)
            answered.set()

        info = ServiceInfo(name=name, port=port, ports=(port,))
        logger.bind(child=child_id).info("start requested {}", BY_HAND)
        self._handle.tell_child(SERVICES_CHILD, StartService(info=info, answer=operator_start_answer(reply)))
        if not answered.wait(wait_s):
            raise RequestError(f"the service manager did not answer within {wait_s:g} s")
        result = answers[0]
        if result.status == "failed":
            raise RequestError(f"{child_id} was not started: {result.error}")
        if result.status == "running":
            return {"ok": True, "child": child_id, "action": "already-started", "state": "RUNNING"}
        seen: list[bool] = []

        def settled(snapshot: TreeSnapshot) -> ChildInfo | str | None:
            child = snapshot.get(child_id)
            if child is None:
                return "gone" if seen else None
            seen.append(True)
            return child if child.state in (ChildState.RUNNING, ChildState.FATAL, ChildState.BACKOFF) else None

        outcome = self._wait_for(settled, max(0.0, deadline - time.monotonic()))
        if isinstance(outcome, ChildInfo) and outcome.state is ChildState.RUNNING:
            return {"ok": True, "child": child_id, "action": "started", "state": outcome.state.value,
                    "generation": outcome.generation, "pid": outcome.pid}
        raise RequestError(f"{child_id} did not start: {self._describe(child_id)}")

    def _stop(self, args: dict[str, Any]) -> Reply:
        child_id = _child_arg(args)
        if child_id in self._core:
            raise RequestError(f"{child_id} is one of the runner's own children and is not stopped by hand "
                               f"(`kernel-runner ctl restart {child_id}` restarts it)")
        child = self._existing(child_id)
        wait_s = _wait_arg(args)
        if child.state is ChildState.STOPPED:
            return {"ok": True, "child": child_id, "action": "already-stopped", "generation": child.generation}
        self._tell_supervisor(StopChild(child_id=child_id, reason=f"stopped {BY_HAND}", keep_row=True))

        def stopped(snapshot: TreeSnapshot) -> bool | None:
            now = snapshot.get(child_id)
            return True if now is None or now.state is ChildState.STOPPED else None

        if self._wait_for(stopped, wait_s) is None:
            raise RequestError(f"{child_id} has not stopped within {wait_s:g} s: {self._describe(child_id)}")
        return {"ok": True, "child": child_id, "action": "stopped", "generation": child.generation}

    def _signal(self, args: dict[str, Any]) -> Reply:
        child_id = _child_arg(args)
        signum = _signal_arg(args.get("signal"))
        child = self._existing(child_id)
        if child.pid is None or child.pid <= 1 or child.pid == os.getpid():
            raise RequestError(f"{child_id} has no process to signal ({child.state.value})")
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            raise RequestError(f"{child_id}'s process {child.pid} is gone") from None
        except PermissionError:
            raise RequestError(f"not allowed to signal {child_id}'s process {child.pid}") from None
        name = _signal_name(signum)
        logger.bind(child=child_id).info("sent {} to pid {} {}", name, child.pid, BY_HAND)
        return {"ok": True, "child": child_id, "pid": child.pid, "signal": name}

    def _tail(self, args: dict[str, Any]) -> Reply | Following:
        child_id = _child_arg(args)
        lines = args.get("lines", DEFAULT_TAIL_LINES)
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
            raise RequestError(f"lines must be a whole number >= 0, got {lines!r}")
        lines = min(lines, LINES_PER_CHILD)
        book = self._handle.log_book
        known = book.children()
        if child_id not in known and self._snapshot().get(child_id) is None:
            raise RequestError(f"no child {child_id} (children with lines: {', '.join(sorted(known)) or 'none'})")
        if not args.get("follow"):
            return {"ok": True, "child": child_id, "lines": book.tail(child_id, lines)}
        return Following(book, child_id, lines)

    def _reload(self, args: dict[str, Any]) -> Reply:
        wait_s = _wait_arg(args)
        summary = self._handle.reload_service_definitions(timeout=wait_s)
        if summary is None:
            raise RequestError(f"the service manager did not report a reload within {wait_s:g} s (start-up not done, "
                               "or this runner's services do not come from a service-defs folder)")
        return {"ok": True, "loaded": summary.loaded, "added": summary.added, "changed": summary.changed,
                "removed": summary.removed, "invalid": summary.invalid, "kept": summary.kept,
                "problems": summary.problems}


# ---- helpers ----------------------------------------------------------------------------------------------------------
def _child_row(child: ChildInfo, now: float, wall_now: float) -> dict[str, Any]:
    uptime = child.uptime_s(now)
    since = None
    if uptime is not None:
        since = datetime.datetime.fromtimestamp(wall_now - uptime).astimezone().isoformat(timespec="seconds")
    return {
        "id": child.child_id, "state": child.state.value, "pid": child.pid, "generation": child.generation,
        "restarts": child.restarts, "last_exit": child.last_exit,
        "uptime_s": None if uptime is None else round(uptime, 2), "since": since,
        # What its probes say (docs/protocol.md §6.14, §7.2): from its extra, where the prober publishes it.
        "health": child.extra.get("health") if isinstance(child.extra.get("health"), str) else None,
        "extra": dict(child.extra), "children": [],
    }


def _child_arg(args: dict[str, Any]) -> ChildId:
    child = args.get("child")
    if not isinstance(child, str) or not child:
        raise RequestError('"child" must be a child id (`kernel-runner ctl status` lists them)')
    return ChildId(child)


def _port_arg(args: dict[str, Any]) -> int | None:
    port = args.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535):
        raise RequestError(f"port must be a port number 1-65535, got {port!r}")
    return port


def _names_arg(args: dict[str, Any]) -> list[ChildId]:
    names = args.get("children", [])
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise RequestError('"children" must be a list of child ids (`kernel-runner ctl status` lists them)')
    return [ChildId(name) for name in names]


def _wait_arg(args: dict[str, Any]) -> float:
    wait_s = args.get("timeout", DEFAULT_WAIT_S)
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not 0 < wait_s <= MAX_WAIT_S:
        raise RequestError(f"timeout must be a number of seconds in (0, {MAX_WAIT_S:g}], got {wait_s!r}")
    return float(wait_s)


def _signal_arg(value: object) -> int:
    """A signal by number (9) or name (KILL, SIGKILL, kill)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 < value < signal.NSIG:
            return value
        raise RequestError(f"no signal number {value} (1-{signal.NSIG - 1})")
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    raise RequestError(f"unknown signal {value!r} (a name such as TERM or HUP, or a number)")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


__all__ = ["ControlCommands", "Following", "Handler", "Reply", "RequestError"]
