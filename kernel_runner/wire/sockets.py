"""Binding ZeroMQ sockets the same way for the agent and the terminal sockets (port 0 asks the OS for one)."""

from __future__ import annotations

import struct
from typing import NamedTuple

import zmq


def endpoint(bind: str, port: int) -> str:
    return f"tcp://{bind}:{port}"


def bind_socket(sock: zmq.Socket[bytes], bind: str, port: int) -> int:
    """Returns the port really bound (tests and embedders pass 0)."""
    if port == 0:
        return sock.bind_to_random_port(f"tcp://{bind}")
    sock.bind(endpoint(bind, port))
    return port


class MonitorEvent(NamedTuple):
    event: int  # a zmq.EVENT_* flag
    value: int
    endpoint: bytes


def recv_monitor_event(monitor: zmq.Socket[bytes], flags: int = 0) -> MonitorEvent:
    """One event from a `get_monitor_socket()` socket, in libzmq's format (zmq_socket_monitor(3)): a uint16 event and
    a uint32 value, then the endpoint. pyzmq's `zmq.utils.monitor` would do it too, but it imports zmq.asyncio, and
    with it asyncio and ssl: about 6 MB of an idle runner's RSS (docs/architecture.md §2.1)."""
    frames = monitor.recv_multipart(flags)
    event, value = struct.unpack("=HI", frames[0][:6])
    return MonitorEvent(event=event, value=value, endpoint=frames[1] if len(frames) > 1 else b"")
