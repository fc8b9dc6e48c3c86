"""ControlServer: the runner's side of the control socket (docs/operations.md §1): the socket file, connections,
request framing; what each command does is `commands`.

Not an actor. A daemon thread accepts connections and one short-lived thread per connection reads its request lines
and writes one reply line each, from the command table.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import select
import socket
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from kernel_runner.control.commands import ControlCommands, Following, Handler, Reply, RequestError
from kernel_runner.control.protocol import (
    COMMANDS,
    MAX_REQUEST_BYTES,
    MAX_SOCKET_PATH_BYTES,
    OWN_SOCKET_NAME,
    ProtocolError,
    decode_request,
    default_socket_path,
    encode,
    error_reply,
    own_socket_path,
    runner_sockets,
)
from kernel_runner.ids import ChildId
from kernel_runner.procs.wakeup import WakeupPipe
from kernel_runner.supervision.clock import Clock

if TYPE_CHECKING:
    from kernel_runner.control.commands import RunnerHandle

MAX_CONNECTIONS = 16  # more at once get a `busy` error reply and are closed
IDLE_TIMEOUT_S = 30.0  # a connection that sends no request this long is closed (its slot is freed)
SEND_TIMEOUT_S = 10.0  # a client that does not read its reply (or a `tail -f`) this long is dropped
LIVE_PROBE_S = 1.0  # a socket file whose listener does not take a connection within this is held to be live


class ControlSocketError(Exception):
    """The control socket cannot be set up; one line for the start-up error."""


class ControlSocketInUse(ControlSocketError):
    """Another runner answers on the socket's path."""


def start_control_server(handle: RunnerHandle, *, delegate: ChildId | None, clock: Clock) -> ControlServer | None:
    """The runner's control server on `config.control_socket` (None: the runner has none).

    A path given on purpose (an option, the environment, embedding) that another runner answers on is an error
    (ControlSocketError). At the shared default path it is not: several runners on one machine (a second `make run`,
    containers sharing /tmp) must not keep each other from starting, nor may a later one go without a socket and
    leave `ctl` to steer the first: it takes a socket of its own in the same folder, and `ctl` lists them.
    """
    path = handle.config.control_socket
    if path is None:
        return None
    return ControlServer(handle, path, delegate=delegate, clock=clock, shared=path == default_socket_path()).start()


class ControlServer:
    """Answers `kernel-runner ctl` on a unix socket (mode 0600) until `stop`.

    `path` is the socket it was given; when `shared` (the default path, which other runners may hold) and another
    runner answers there, it listens on control-<pid>.sock in the same folder instead: `path` is then that one."""

    def __init__(self, handle: RunnerHandle, path: Path, *, delegate: ChildId | None, clock: Clock,
                 shared: bool = False) -> None:
        self.path = path
        self.log = logger.bind(child="control")
        self._shared = shared
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._closing = threading.Event()
        self._board = handle.board
        self._handle, self._delegate, self._clock = handle, delegate, clock
        self._handlers: dict[str, Handler] = {}  # the command table, once the socket's path is known
        self._wakeup = WakeupPipe()
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # the socket file we made: only that one is removed at stop
        self._thread = threading.Thread(target=self._accept_loop, name="ControlServer", daemon=True)

    # ---- life -------------------------------------------------------------------------------------------------------
    def start(self) -> ControlServer:
        wanted = self.path
        try:
            self._listener, self.path = self._bind()
        except ControlSocketError:
            self._wakeup.close()
            raise
        self._handlers = ControlCommands(self._handle, socket_path=self.path, delegate=self._delegate,
                                         clock=self._clock, closing=self._closing).table
        self._thread.start()
        if self.path == wanted:
            self.log.info("control socket on {}", self.path)
        else:
            self.log.warning("another runner answers on the default control socket {}; this runner's is {} "
                             "(`kernel-runner ctl --pid {}` or `--socket {}` reaches it)", wanted, self.path,
                             os.getpid(), self.path)
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop accepting, end every connection (a `tail -f` too), remove the socket file if it is still ours."""
        with self._lock:
            self._closing.set()
            connections = list(self._connections)
        self._wakeup.wake()
        self._board.nudge()  # a command waiting for an outcome hears that the runner stops
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
    def _bind(self) -> tuple[socket.socket, Path]:
        """Bind under a temporary name, make it 0600, then rename it into place, so the socket is never reachable
        with wider permissions. Runners starting at once take turns (a lock on the folder)."""
        folder = self.path.parent
        temp = folder / f".ctl-{os.getpid()}"  # short: it must fit a unix socket path as well
        candidates = [self.path]
        if self._shared:  # the default path another runner may hold: then one of this runner's own
            candidates += [own_socket_path(self.path, os.getpid()),
                           own_socket_path(self.path, os.getpid(), secrets.token_hex(3))]
        for candidate in (self.path, temp):
            _check_length(candidate)
        self._prepare_folder(folder)
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(folder_fd, fcntl.LOCK_EX)
            if self._shared:
                self._remove_stale_own_sockets(folder)
            path = self._free_path(candidates)
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
            return listener, path
        finally:
            os.close(folder_fd)  # also releases the lock

    def _free_path(self, candidates: list[Path]) -> Path:
        """The first candidate no runner answers on (a stale socket there is removed)."""
        for candidate in candidates:
            _check_length(candidate)
            try:
                self._replace_stale(candidate)
            except ControlSocketInUse:
                if candidate == candidates[-1]:
                    raise
                continue
            return candidate
        raise AssertionError("unreachable: the last candidate returns or raises")

    def _remove_stale_own_sockets(self, folder: Path) -> None:
        """Runners killed with SIGKILL leave their control-<pid>.sock behind: nobody would ever reuse the name."""
        for path in runner_sockets(folder):
            if OWN_SOCKET_NAME.fullmatch(path.name):
                try:
                    self._replace_stale(path, verb="removed")
                except ControlSocketError:
                    pass  # a live runner's

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

    def _replace_stale(self, path: Path, *, verb: str = "replaced") -> None:
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
            self.log.info("{} the stale control socket {} (its runner is gone)", verb, path)
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
        """The reply to one request line; None when the command answered on the connection itself (`tail -f`)."""
        try:
            command, args = decode_request(line)
        except ProtocolError as exc:
            return error_reply(str(exc))
        handler = self._handlers.get(command)
        if handler is None:
            return error_reply(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
        try:
            reply = handler(args)
            if isinstance(reply, Following):
                self._follow(conn, reply)
                return None
            return reply
        except RequestError as exc:
            return error_reply(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug answers this request with an error, the server goes on
            self.log.opt(exception=exc).error("control command {} failed: {!r}", command, exc)
            return error_reply(f"internal error: {exc!r}")

    def _follow(self, conn: socket.socket, following: Following) -> None:
        """`tail -f` keeps the connection: the backlog, then the lines `following` queues, until the client or the
        runner closes."""
        try:
            if not self._send(conn, following.first):
                return
            poller = select.poll()
            poller.register(conn, select.POLLIN)
            poller.register(following.fd, select.POLLIN)
            while not self._closing.is_set():
                events = poller.poll()
                if any(fd == conn.fileno() for fd, _ in events) and not _still_open(conn):
                    return
                replies = following.pending()
                if replies and not self._send(conn, *replies):
                    return
        finally:
            following.close()


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ControlSocketError(f"the control socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes (a "
                                 "unix socket's limit)")


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
