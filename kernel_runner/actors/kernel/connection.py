"""KernelConnection: the Jupyter session and the five ZeroMQ sockets to one kernel, for the channel thread.

It opens the shell, control, stdin, iopub and hb sockets from the connection file's fields, signs and reads messages
through jupyter_client's Session, and watches the stdin socket's handshake (readiness waits for it). Only
KernelChannels' thread uses it, from `open` to `close`: every socket has that one owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import zmq

from kernel_runner.wire.sockets import recv_monitor_event

if TYPE_CHECKING:
    from loguru import Logger

HB_SNDHWM = 16  # pings waiting for a kernel that does not read them: more would say nothing new
CHANNELS = (("shell", zmq.DEALER), ("control", zmq.DEALER), ("stdin", zmq.DEALER), ("iopub", zmq.SUB), ("hb", zmq.DEALER))


class KernelConnection:
    """The session and the sockets; `sockets` by channel name, once `open` has run."""

    def __init__(self, connection: Mapping[str, Any], log: Logger) -> None:
        self._info = dict(connection)
        self._log = log
        self._session: Any = None
        self.sockets: dict[str, zmq.Socket[bytes]] = {}
        self.stdin_monitor: zmq.Socket[bytes] | None = None

    def _url(self, channel: str) -> str:
        info = self._info
        port = info[f"{channel}_port"]
        if info.get("transport", "tcp") == "ipc":
            return f"ipc://{info['ip']}-{port}"
        return f"{info.get('transport', 'tcp')}://{info['ip']}:{port}"

    def open(self) -> None:
        from jupyter_client.session import Session

        info = self._info
        self._session = Session(
            key=str(info["key"]).encode("ascii"),
            signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
            username="kernel-runner",
        )
        context: zmq.Context[Any] = zmq.Context.instance()
        identity: bytes = self._session.bsession
        for channel, kind in CHANNELS:
            sock: zmq.Socket[bytes] = context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if channel == "hb":
                sock.setsockopt(zmq.SNDHWM, HB_SNDHWM)
            if channel in ("shell", "stdin"):
                # The kernel routes input_request to the stdin socket that shares the shell socket's identity.
                sock.setsockopt(zmq.IDENTITY, identity)
            if kind == zmq.SUB:
                # PUB drops at the high-water mark; never lose an idle status or output while the agent is slow.
                sock.setsockopt(zmq.RCVHWM, 0)
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            if channel == "stdin":
                # The kernel's stdin ROUTER drops an input_request for a peer whose connection is not complete yet,
                # and nothing else travels that way before the first input(): readiness waits for this handshake.
                self.stdin_monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            sock.connect(self._url(channel))
            self.sockets[channel] = sock

    def recv(self, channel: str) -> dict[str, Any] | None:
        """The next message (None: nothing waiting; {}: one that could not be read, dropped)."""
        try:
            _, msg = self._session.recv(self.sockets[channel], mode=zmq.NOBLOCK, copy=False)
        except ValueError as exc:  # a bad signature or a malformed message: drop it, keep the channel
            self._log.warning("dropped an unreadable {} message: {}", channel, exc)
            return {}
        return msg  # type: ignore[no-any-return]

    def send(self, channel: str, msg_type: str, content: dict[str, Any], parent: Any = None) -> str:
        msg = self._session.send(self.sockets[channel], msg_type, content=content, parent=parent)
        return str(msg["header"]["msg_id"])

    def stdin_handshake_seen(self) -> bool:
        """Whether the monitor saw the stdin socket's handshake complete among the events waiting."""
        monitor = self.stdin_monitor
        seen = False
        while monitor is not None:
            try:
                event = recv_monitor_event(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return seen
            seen = seen or event.event == zmq.EVENT_HANDSHAKE_SUCCEEDED
        return seen

    def close_stdin_monitor(self) -> None:
        if self.stdin_monitor is None:
            return
        self.sockets["stdin"].disable_monitor()
        self.stdin_monitor.close(linger=0)
        self.stdin_monitor = None

    def close(self) -> None:
        if "stdin" in self.sockets:
            self.close_stdin_monitor()
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.sockets.clear()


__all__ = ["KernelConnection"]
