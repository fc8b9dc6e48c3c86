"""Binding ZeroMQ sockets the same way for the agent and the terminal sockets (port 0 asks the OS for one)."""

from __future__ import annotations

import zmq


def endpoint(bind: str, port: int) -> str:
    return f"tcp://{bind}:{port}"


def bind_socket(sock: zmq.Socket[bytes], bind: str, port: int) -> int:
    """Returns the port really bound (tests and embedders pass 0)."""
    if port == 0:
        return sock.bind_to_random_port(f"tcp://{bind}")
    sock.bind(endpoint(bind, port))
    return port
