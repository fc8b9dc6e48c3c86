"""The control socket's client side: connect, send one request line, read reply lines. Standard library only, so
`kernel-runner ctl` loads no actor code, no pykka and no ZeroMQ (docs/operations.md §1)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from kernel_runner.control.protocol import MAX_REPLY_BYTES, decode_reply, encode


class ControlError(Exception):
    """The conversation with the runner failed; the text is one line for the operator."""


class NoRunner(ControlError):
    """Nothing listens on the socket (missing, or a dead runner's file)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no runner answering on {path}")
        self.path = path


class ControlClient:
    """One connection to a runner's control socket; `timeout` bounds the connect and every read."""

    def __init__(self, path: Path, *, timeout: float) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            self._sock.close()
            raise NoRunner(path) from None
        except PermissionError:
            self._sock.close()
            raise ControlError(f"permission denied on {path} (the socket is for the runner's user only)") from None
        except OSError as exc:
            self._sock.close()
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        self._reader = self._sock.makefile("rb")

    def request(self, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return its reply (an error reply too: `ok` says which)."""
        try:
            self._sock.sendall(encode({"cmd": command, "args": args or {}}))
        except OSError as exc:
            raise ControlError(f"the runner closed the connection ({exc.strerror or exc})") from None
        return self.read_reply()

    def read_reply(self) -> dict[str, Any]:
        """The next reply line; ControlError when the runner closed the connection or did not answer in time."""
        try:
            line = self._reader.readline(MAX_REPLY_BYTES + 1)
        except TimeoutError:
            raise ControlError(f"no reply from the runner within {self._sock.gettimeout():g} s") from None
        except OSError as exc:
            raise ControlError(f"the connection broke: {exc.strerror or exc}") from None
        if not line:
            raise ControlError("the runner closed the connection")
        if not line.endswith(b"\n"):
            raise ControlError(f"the runner's reply is longer than {MAX_REPLY_BYTES} bytes")
        try:
            return decode_reply(line)
        except ValueError as exc:
            raise ControlError(str(exc)) from None

    def wait_forever(self) -> None:
        """From now on reads wait without a bound (`tail -f`)."""
        self._sock.settimeout(None)

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class FoundRunner(NamedTuple):
    """A runner that answered on `path`; `version` is its `version` reply (`pid`, `lang`, `version`)."""

    path: Path
    version: dict[str, Any]


def runners_answering(paths: Sequence[Path], *, timeout: float) -> list[FoundRunner]:
    """The runners that answer `version` on `paths`. A socket nobody listens on (a runner killed with SIGKILL left
    it) does not count, nor does one that does not answer within `timeout`."""
    found = []
    for path in paths:
        try:
            with ControlClient(path, timeout=timeout) as client:
                reply = client.request("version")
        except ControlError:
            continue
        if reply["ok"]:
            found.append(FoundRunner(path, reply))
    return found


__all__ = ["ControlClient", "ControlError", "FoundRunner", "NoRunner", "runners_answering"]
