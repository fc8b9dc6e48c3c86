"""UserInputServer: the batch-mode user-input socket (docs/protocol.md §5.6), owned by one thread that tells the runner."""

from __future__ import annotations

import itertools
import os
import queue
import selectors
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import attrs
import pykka
from loguru import logger

from kernel_runner.excerpts import excerpt
from kernel_runner.observability.debug_lines import debug
from kernel_runner.procs.wakeup import WakeupPipe
from kernel_runner.supervision.refs import tell_if_alive

LISTEN_BACKLOG = 16
ANSWER_TIMEOUT_S = 2.0
STOP_JOIN_S = 1.0


@attrs.frozen(kw_only=True)
class InputRequested:
    """A process connected to the socket: it waits for the text of the next `input` op."""

    conn_id: int


@attrs.frozen(kw_only=True)
class InputAbandoned:
    """The process hung up before it got its answer (it ended, or was interrupted)."""

    conn_id: int


@attrs.frozen(kw_only=True)
class InputServerFailed:
    """The server's thread ended by an error (its connections are closed): the owner starts a new server."""

    server_id: int
    error: str


class UserInputError(OSError):
    """The socket path cannot be used (for example it names a regular file we must not delete)."""


class UserInputServer(threading.Thread):
    """Accepts connections on a Unix stream socket and answers each with one text, then closes it.

    The thread owns the listening socket and every connection from bind to close; the actor only decides
    (`answer`). Each connection is watched for a hang-up, so a prompt whose process died is not answered
    with the next input. The connection carries no request data (docs/protocol.md §5.6): whatever a client sends is read
    and discarded. An error on one connection costs that connection only; if the thread ends anyway, it tells its
    owner `InputServerFailed`, and the owner starts a new server.
    """

    _serials = itertools.count(1)

    def __init__(self, path: Path, owner: pykka.ActorRef[Any]) -> None:
        self.server_id = next(UserInputServer._serials)
        super().__init__(name=f"UserInputServer-{self.server_id}", daemon=True)
        self.path = path
        self._owner = owner
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._selector = selectors.DefaultSelector()
        self._wakeup = WakeupPipe()
        self._answers: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
        self._conns: dict[int, socket.socket] = {}
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self.log = logger.bind(child="user-input")

    # ---- called by the owner ------------------------------------------------------------------
    def bind(self) -> None:
        """Bind and listen in the caller's thread, so a bad path fails the caller's step, not a thread."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise UserInputError(f"{self.path} exists and is not a socket; not replacing it")
            # docs/protocol.md §1.5: a stale socket file (left by an earlier runner) is replaced.
            os.unlink(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._inode = os.lstat(self.path).st_ino

    def answer(self, conn_id: int, data: bytes) -> None:
        """Thread-safe: write `data` to that connection and close it (nothing happens if it hung up)."""
        self._answers.put((conn_id, data))
        self._wakeup.wake()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.wake()
        if self.is_alive():
            self.join(timeout=STOP_JOIN_S)
        else:
            self._close_all()

    # ---- the thread ---------------------------------------------------------------------------
    def run(self) -> None:
        error = "the thread ended unexpectedly"
        try:
            self._serve()
        except Exception as exc:  # noqa: BLE001 - a dying server must say why; its owner starts a new one
            error = repr(exc)
            self.log.opt(exception=exc).error("user-input server failed: {!r}", exc)
        finally:
            self._close_all()
            if not self._stopping.is_set():  # not asked to stop: the owner must hear that batch input is gone
                tell_if_alive(self._owner, InputServerFailed(server_id=self.server_id, error=error))

    def _serve(self) -> None:
        listener = self._listener
        assert listener is not None, "bind() first"
        self._selector.register(listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wakeup.fd, selectors.EVENT_READ, "wake")
        while not self._stopping.is_set():
            # No timeout: stop() and answer() wake the selector through the pipe (nothing to poll for while idle).
            for key, _ in self._selector.select():
                self._on_event(key.data, listener)
            self._write_answers()

    def _on_event(self, what: str, listener: socket.socket) -> None:
        """One event; an error in it costs that connection at most, never the server."""
        try:
            if what == "listen":
                self._accept(listener)
            elif what == "wake":
                self._wakeup.drain()
            else:
                self._readable(int(what))
        except Exception as exc:  # noqa: BLE001 - logged, and the server goes on
            self.log.opt(exception=exc).error("user-input event {} failed: {!r}; going on", what, exc)
            if what not in ("listen", "wake"):
                self._drop(int(what))
                self._tell(InputAbandoned(conn_id=int(what)))

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("accept failed: {}", exc)
                return
            conn.setblocking(False)
            conn_id = next(self._ids)
            self._conns[conn_id] = conn
            self._selector.register(conn, selectors.EVENT_READ, str(conn_id))
            if not self._tell(InputRequested(conn_id=conn_id)):
                self._drop(conn_id)

    def _readable(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            debug(self.log, "connection {} sent {} bytes, discarded: {}", conn_id, len(data), excerpt(data))
            return  # no request data is defined; discard
        self._drop(conn_id)
        self._tell(InputAbandoned(conn_id=conn_id))

    def _write_answers(self) -> None:
        while True:
            try:
                conn_id, data = self._answers.get_nowait()
            except queue.Empty:
                return
            conn = self._conns.get(conn_id)
            if conn is None:
                self.log.info("input for connection {} not delivered: it hung up", conn_id)
                continue
            try:
                conn.setblocking(True)
                conn.settimeout(ANSWER_TIMEOUT_S)
                conn.sendall(data)
            except Exception as exc:  # noqa: BLE001 - this answer is lost (logged); the others still go out
                self.log.warning("writing input {} to connection {} failed: {!r}", excerpt(data), conn_id, exc)
            self._drop(conn_id)

    def _drop(self, conn_id: int) -> None:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _tell(self, message: object) -> bool:
        if tell_if_alive(self._owner, message):
            return True
        self._stopping.set()
        return False

    def _close_all(self) -> None:
        for conn_id in list(self._conns):
            self._drop(conn_id)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            # Only our own socket file: a later runner may have replaced it already.
            try:
                if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass
        self._selector.close()
        self._wakeup.close()
