"""ControlServer: the runner's side of the control socket (docs/operations.md §1).

Not an actor. A daemon thread accepts connections and one short-lived thread per connection answers its requests,
from what the runner already publishes without being asked (the tree snapshot on the status board, the start-up
gate, the child log book). Commands go to the supervisor and the service manager by `tell`; waiting for their outcome
(a restarted child running again) is a bounded look at the published tree, never an ask.
"""

from __future__ import annotations

import collections
import datetime
import errno
import fcntl
import os
import platform
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

import kernel_runner
from kernel_runner.childlog import LINES_PER_CHILD
from kernel_runner.clock import Clock
from kernel_runner.control.protocol import (
    COMMANDS,
    MAX_REQUEST_BYTES,
    MAX_SOCKET_PATH_BYTES,
    ProtocolError,
    decode_request,
    default_socket_path,
    encode,
    error_reply,
)
from kernel_runner.exits import RestartRequested
from kernel_runner.ids import LANG_CHILD, ROUTER_CHILD, SERVICES_CHILD, ChildId
from kernel_runner.messages import ServiceInfo, ServiceResult, StartService
from kernel_runner.refs import tell_if_alive
from kernel_runner.supervision import ChildInfo, ChildState, RestartChild, StopChild, TreeSnapshot
from kernel_runner.wakeup import WakeupPipe

if TYPE_CHECKING:
    from kernel_runner.runtime import RunnerHandle

T = TypeVar("T")
Reply = dict[str, Any]

MAX_CONNECTIONS = 16  # more at once get a `busy` error reply and are closed
IDLE_TIMEOUT_S = 30.0  # a connection that sends no request this long is closed (its slot is freed)
SEND_TIMEOUT_S = 10.0  # a client that does not read its reply (or a `tail -f`) this long is dropped
DEFAULT_WAIT_S = 10.0  # how long start/stop/restart/reload wait for the outcome unless the request says
MAX_WAIT_S = 300.0
TREE_LOOK_S = 0.02  # the published tree is looked at this often while a command waits for its outcome
LIVE_PROBE_S = 1.0  # a socket file whose listener does not take a connection within this is held to be live
FOLLOW_BACKLOG = 10_000  # lines queued for a `tail -f` reader slower than the child's logging; beyond, dropped
DEFAULT_TAIL_LINES = 20
BY_HAND = "by hand (kernel-runner ctl)"
# `start` of a child in one of these answers `already started` (supervisorctl's answer), exit 0.
UP_STATES = frozenset({ChildState.RUNNING, ChildState.STARTING})


class ControlSocketError(Exception):
    """The control socket cannot be set up; one line for the start-up error."""


class ControlSocketInUse(ControlSocketError):
    """Another runner answers on the socket's path."""


class RequestError(Exception):
    """A request that cannot be done; its text is the error reply."""


def start_control_server(handle: RunnerHandle, *, delegate: ChildId | None, clock: Clock) -> ControlServer | None:
    """The runner's control server on `config.control_socket` (None: the runner has none).

    A path given on purpose (an option, the environment, embedding) that another runner answers on is an error
    (ControlSocketError). At the shared default path it is not: several runners on one machine (tests, a
    developer's) would otherwise keep each other from starting, so the later one logs it and serves without.
    """
    path = handle.config.control_socket
    if path is None:
        return None
    server = ControlServer(handle, path, delegate=delegate, clock=clock)
    try:
        return server.start()
    except ControlSocketInUse as exc:
        if path != default_socket_path():
            raise
        logger.bind(child="control").warning("{}; this runner has no control socket (give it one with "
                                             "--control-socket PATH)", exc)
        return None


class ControlServer:
    """Answers `kernel-runner ctl` on a unix socket (mode 0600) until `stop`."""

    def __init__(self, handle: RunnerHandle, path: Path, *, delegate: ChildId | None, clock: Clock) -> None:
        self._handle = handle
        self.path = path
        self._clock = clock
        # Children the runner cannot work without: restarted by hand, never stopped by hand.
        self._core = frozenset(c for c in (ROUTER_CHILD, LANG_CHILD, SERVICES_CHILD, delegate) if c is not None)
        self._ready_children = tuple(c for c in (ROUTER_CHILD, LANG_CHILD, delegate) if c is not None)
        self._handlers: dict[str, Callable[[dict[str, Any], socket.socket], Reply | None]] = {
            "status": self._status, "start": self._start, "stop": self._stop, "restart": self._restart,
            "signal": self._signal, "tail": self._tail, "ready": self._ready, "reload": self._reload,
            "version": self._version,
        }
        assert tuple(self._handlers) == COMMANDS
        self.log = logger.bind(child="control")
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._closing = threading.Event()
        self._wakeup = WakeupPipe()
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # the socket file we made: only that one is removed at stop
        self._thread = threading.Thread(target=self._accept_loop, name="ControlServer", daemon=True)

    # ---- life -------------------------------------------------------------------------------------------------------
    def start(self) -> ControlServer:
        try:
            self._listener = self._bind()
        except ControlSocketError:
            self._wakeup.close()
            raise
        self._thread.start()
        self.log.info("control socket on {}", self.path)
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop accepting, end every connection (a `tail -f` too), remove the socket file if it is still ours."""
        with self._lock:
            self._closing.set()
            connections = list(self._connections)
        self._wakeup.wake()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the connection's thread: its reads end at once
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._listener is not None:
            self._listener.close()
        self._wakeup.close()
        self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        try:
            found = os.lstat(self.path)
        except OSError:
            return
        if self._identity == (found.st_dev, found.st_ino):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    # ---- the socket file --------------------------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        """Bind under a temporary name, make it 0600, then rename it into place, so the socket is never reachable
        with wider permissions. Runners starting at once take turns (a lock on the folder)."""
        path = self.path
        folder = path.parent
        temp = folder / f".ctl-{os.getpid()}"  # short: it must fit a unix socket path as well
        for candidate in (path, temp):
            if len(os.fsencode(candidate)) > MAX_SOCKET_PATH_BYTES:
                raise ControlSocketError(f"the control socket path {candidate} is longer than "
                                         f"{MAX_SOCKET_PATH_BYTES} bytes (a unix socket's limit)")
        self._prepare_folder(folder)
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(folder_fd, fcntl.LOCK_EX)
            self._replace_stale(path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                temp.unlink(missing_ok=True)
                listener.bind(str(temp))
                os.chmod(temp, 0o600)
                listener.listen(MAX_CONNECTIONS)
                os.rename(temp, path)
                found = os.lstat(path)
            except OSError as exc:
                listener.close()
                temp.unlink(missing_ok=True)
                raise ControlSocketError(f"cannot bind the control socket {path}: {exc.strerror or exc}") from None
            self._identity = (found.st_dev, found.st_ino)
            listener.setblocking(False)
            return listener
        finally:
            os.close(folder_fd)  # also releases the lock

    def _prepare_folder(self, folder: Path) -> None:
        """A missing folder is made 0700. The shared default one (/tmp/kernel-runner-<uid>) must be ours."""
        try:
            folder.mkdir(mode=0o700, parents=True)
            return
        except FileExistsError:
            pass
        except OSError as exc:
            raise ControlSocketError(f"cannot make the folder {folder} for the control socket: "
                                     f"{exc.strerror or exc}") from None
        if folder != default_socket_path().parent:
            return
        found = os.lstat(folder)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
            raise ControlSocketError(f"{folder} is not a folder owned by this user: not putting the control socket "
                                     "there (--control-socket PATH picks another place)")
        if found.st_mode & 0o077:
            os.chmod(folder, 0o700)

    def _replace_stale(self, path: Path) -> None:
        """A socket file nobody listens on was left by a runner that is gone: removed. A live one is an error."""
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(found.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket: not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(LIVE_PROBE_S)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            self.log.info("replaced the stale control socket {} (its runner is gone)", path)
            return
        except OSError as exc:  # a full backlog or a slow listener: somebody is there
            raise ControlSocketInUse(f"another runner answers on the control socket {path} ({exc})") from None
        finally:
            probe.close()
        raise ControlSocketInUse(f"another runner answers on the control socket {path}")

    # ---- connections ------------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wakeup.fd, select.POLLIN)
        while not self._closing.is_set():
            poller.poll()
            if self._closing.is_set():
                break
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # out of fds, say: wait a moment rather than spin on a listener that stays ready
                self.log.error("cannot accept a control connection: {}", exc)
                self._closing.wait(0.1)
                continue
            try:
                self._admit(conn)
            except Exception as exc:  # noqa: BLE001 - one bad connection must not end the accept loop
                self.log.opt(exception=exc).error("control connection dropped: {!r}", exc)
                with self._lock:
                    self._connections.discard(conn)
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        with self._lock:
            admitted = not self._closing.is_set() and len(self._connections) < MAX_CONNECTIONS
            if admitted:
                self._connections.add(conn)
        if not admitted:
            conn.settimeout(0.5)
            try:
                conn.sendall(encode(error_reply(f"busy: {MAX_CONNECTIONS} control connections are open; try again")))
                conn.shutdown(socket.SHUT_WR)
                conn.recv(MAX_REQUEST_BYTES, socket.MSG_DONTWAIT)  # a request left unread would reset the connection
            except OSError:
                pass
            conn.close()
            return
        conn.setblocking(True)
        conn.settimeout(IDLE_TIMEOUT_S)
        threading.Thread(target=self._serve, args=(conn,), name="control-connection", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """One connection: request lines in, one reply line each (a `tail -f` keeps the connection for itself)."""
        try:
            with conn.makefile("rb") as reader:
                while not self._closing.is_set():
                    try:
                        line = reader.readline(MAX_REQUEST_BYTES + 1)
                    except OSError:  # idle past IDLE_TIMEOUT_S, or reset
                        break
                    if not line:
                        break
                    if len(line) > MAX_REQUEST_BYTES:
                        self._send(conn, error_reply(f"the request is longer than {MAX_REQUEST_BYTES} bytes"))
                        _discard_input(conn)
                        break  # the rest of that line cannot be told from the next request
                    if not line.strip():
                        continue
                    reply = self._dispatch(line, conn)
                    if reply is None or not self._send(conn, reply):
                        break
        except Exception as exc:  # noqa: BLE001 - a connection's bug ends that connection only
            self.log.opt(exception=exc).error("control connection failed: {!r}", exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _send(self, conn: socket.socket, *replies: Reply) -> bool:
        try:
            conn.settimeout(SEND_TIMEOUT_S)
            conn.sendall(b"".join(encode(reply) for reply in replies))
            conn.settimeout(IDLE_TIMEOUT_S)
        except OSError:
            return False
        return True

    def _dispatch(self, line: bytes, conn: socket.socket) -> Reply | None:
        """The reply to one request line; None when the handler answered on the connection itself (`tail -f`)."""
        try:
            command, args = decode_request(line)
        except ProtocolError as exc:
            return error_reply(str(exc))
        handler = self._handlers.get(command)
        if handler is None:
            return error_reply(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
        try:
            return handler(args, conn)
        except RequestError as exc:
            return error_reply(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug answers this request with an error, the server goes on
            self.log.opt(exception=exc).error("control command {} failed: {!r}", command, exc)
            return error_reply(f"internal error: {exc!r}")

    # ---- what the runner publishes ----------------------------------------------------------------------------------
    def _snapshot(self) -> TreeSnapshot:
        return self._handle.board.snapshot

    def _existing(self, child_id: ChildId) -> ChildInfo:
        child = self._snapshot().get(child_id)
        if child is None:
            raise RequestError(f"no child {child_id} (`kernel-runner ctl status` lists them)")
        return child

    def _wait_for(self, found: Callable[[TreeSnapshot], T | None], timeout: float) -> T | None:
        """Look at the published tree until `found` returns something, within `timeout` (a stop ends it early)."""
        deadline = time.monotonic() + timeout
        while True:
            value = found(self._snapshot())
            remaining = deadline - time.monotonic()
            if value is not None or remaining <= 0:
                return value
            if self._closing.wait(min(TREE_LOOK_S, remaining)):
                raise RequestError("the runner is stopping")

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

    # ---- commands ---------------------------------------------------------------------------------------------------
    def _status(self, _args: dict[str, Any], _conn: socket.socket) -> Reply:
        snapshot = self._snapshot()
        now, wall_now = self._clock.monotonic(), time.time()
        rows = {child.child_id: _child_row(child, now, wall_now) for child in snapshot.children}
        top: list[dict[str, Any]] = []
        for child in snapshot.children:
            parent = child.binds_to
            home = rows[parent]["children"] if parent is not None and parent in rows and parent != child.child_id \
                else top
            home.append(rows[child.child_id])
        why = self._not_ready_because()
        config = self._handle.config
        runner = {"lang": config.lang, "pid": os.getpid(), "version": kernel_runner.__version__, "ready": not why,
                  "not_ready": why, "ports": {"in": self._handle.ports.port_in, "out": self._handle.ports.port_out},
                  "control_socket": str(self.path)}
        return {"ok": True, "runner": runner, "children": top}

    def _ready(self, _args: dict[str, Any], _conn: socket.socket) -> Reply:
        why = self._not_ready_because()
        return {"ok": True, "ready": not why, "not_ready": why}

    def _version(self, _args: dict[str, Any], _conn: socket.socket) -> Reply:
        return {"ok": True, "version": kernel_runner.__version__, "lang": self._handle.config.lang, "pid": os.getpid(),
                "python": platform.python_version()}

    def _restart(self, args: dict[str, Any], _conn: socket.socket) -> Reply:
        child = self._existing(_child_arg(args))
        return self._restart_by_hand(child, _wait_arg(args), action="restarted")

    def _start(self, args: dict[str, Any], _conn: socket.socket) -> Reply:
        child_id = _child_arg(args)
        child = self._snapshot().get(child_id)
        if child is None:
            if child_id.startswith("service:"):
                return self._start_service(child_id, args)
            raise RequestError(f"no child {child_id} (`kernel-runner ctl status` lists them; `service:NAME` starts "
                               "a service from its definition)")
        if child.state in UP_STATES:
            return {"ok": True, "child": child_id, "action": "already-started", "state": child.state.value,
                    "generation": child.generation, "pid": child.pid}
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

    def _start_service(self, child_id: ChildId, args: dict[str, Any]) -> Reply:
        """A service from its definition, through the service manager (as `start-service` would, but the answers
        come back here instead of going to the agent)."""
        name = child_id.removeprefix("service:")
        port = args.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535):
            raise RequestError(f"port must be a port number 1-65535, got {port!r}")
        wait_s = _wait_arg(args)
        deadline = time.monotonic() + wait_s
        answered = threading.Event()
        answers: list[ServiceResult] = []

        def reply(result: ServiceResult) -> None:  # in the service manager's thread: hand the value on, nothing more
            answers.append(result)
            answered.set()

        info = ServiceInfo(name=name, port=port, ports=(port,) if port is not None else ())
        logger.bind(child=child_id).info("start requested {}", BY_HAND)
        self._handle.tell_child(SERVICES_CHILD, StartService(info=info, reply=reply))
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

    def _stop(self, args: dict[str, Any], _conn: socket.socket) -> Reply:
        child_id = _child_arg(args)
        if child_id in self._core:
            raise RequestError(f"{child_id} is one of the runner's own children and is not stopped by hand "
                               f"(`kernel-runner ctl restart {child_id}` restarts it)")
        child = self._existing(child_id)
        wait_s = _wait_arg(args)
        self._tell_supervisor(StopChild(child_id=child_id, reason=f"stopped {BY_HAND}"))
        if self._wait_for(lambda snapshot: True if snapshot.get(child_id) is None else None, wait_s) is None:
            raise RequestError(f"{child_id} has not stopped within {wait_s:g} s: {self._describe(child_id)}")
        return {"ok": True, "child": child_id, "action": "stopped", "generation": child.generation}

    def _signal(self, args: dict[str, Any], _conn: socket.socket) -> Reply:
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

    def _tail(self, args: dict[str, Any], conn: socket.socket) -> Reply | None:
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
        self._follow(conn, child_id, lines)
        return None

    def _follow(self, conn: socket.socket, child_id: ChildId, lines: int) -> None:
        """`tail -f`: the backlog, then each new line as it is logged, until the client or the runner closes."""
        queue: collections.deque[str] = collections.deque()
        dropped = [0]
        wakeup = WakeupPipe()

        def follower(line: str) -> None:  # in the logging thread: queue and wake, never block (nor log)
            if len(queue) < FOLLOW_BACKLOG:
                queue.append(line)
            else:
                dropped[0] += 1
            wakeup.wake()

        backlog, unfollow = self._handle.log_book.follow(child_id, follower, lines=lines)
        try:
            if not self._send(conn, {"ok": True, "child": child_id, "lines": backlog, "following": True}):
                return
            poller = select.poll()
            poller.register(conn, select.POLLIN)
            poller.register(wakeup.fd, select.POLLIN)
            while not self._closing.is_set():
                events = poller.poll()
                if any(fd == conn.fileno() for fd, _ in events) and not _still_open(conn):
                    return
                wakeup.drain()
                replies = []
                while queue:
                    replies.append({"ok": True, "line": queue.popleft()})
                if dropped[0]:
                    replies.append({"ok": True, "dropped": dropped[0]})
                    dropped[0] = 0
                if replies and not self._send(conn, *replies):
                    return
        finally:
            unfollow()
            wakeup.close()

    def _reload(self, args: dict[str, Any], _conn: socket.socket) -> Reply:
        wait_s = _wait_arg(args)
        summary = self._handle.reload_service_definitions(timeout=wait_s)
        if summary is None:
            raise RequestError(f"the service manager did not report a reload within {wait_s:g} s (start-up not done, "
                               "or this runner's services do not come from a service-defs folder)")
        return {"ok": True, "loaded": summary.loaded, "added": summary.added, "changed": summary.changed,
                "removed": summary.removed, "invalid": summary.invalid, "kept": summary.kept}

    def _describe(self, child_id: ChildId) -> str:
        """Where a child is now, for an error line: its state and last exit, or its last log line once it is gone."""
        child = self._snapshot().get(child_id)
        if child is not None:
            exit_part = f", last exit: {child.last_exit}" if child.last_exit else ""
            return f"it is {child.state.value} (generation {child.generation}{exit_part})"
        last = self._handle.log_book.tail(child_id, 1)
        return f"it is gone{'; last log line: ' + last[0] if last else ''}"


# ---- helpers ----------------------------------------------------------------------------------------------------------
def _child_row(child: ChildInfo, now: float, wall_now: float) -> dict[str, Any]:
    uptime = child.uptime_s(now)
    since = None
    if uptime is not None:
        since = datetime.datetime.fromtimestamp(wall_now - uptime).astimezone().isoformat(timespec="seconds")
    return {
        "id": child.child_id, "state": child.state.value, "pid": child.pid, "generation": child.generation,
        "restarts": child.restarts, "last_exit": child.last_exit,
        "uptime_s": None if uptime is None else round(uptime, 2), "since": since, "extra": dict(child.extra),
        "children": [],
    }


def _child_arg(args: dict[str, Any]) -> ChildId:
    child = args.get("child")
    if not isinstance(child, str) or not child:
        raise RequestError('"child" must be a child id (`kernel-runner ctl status` lists them)')
    return ChildId(child)


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


def _discard_input(conn: socket.socket) -> None:
    """Read and drop what the client still sends (bounded), so the close does not reset the connection before the
    client has read its error reply (unread input makes the kernel answer a close with a reset)."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        for _ in range(16):
            if not conn.recv(65536):
                return
    except OSError:
        pass


def _still_open(conn: socket.socket) -> bool:
    """After poll said the connection is readable: False once the client closed it (what it sends is ignored)."""
    try:
        return bool(conn.recv(4096, socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return True
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EINTR)


__all__ = ["ControlServer", "ControlSocketError", "ControlSocketInUse", "start_control_server"]
