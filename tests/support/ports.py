"""Free TCP ports on 127.0.0.1 for services the tests spawn (the OS picks; the tiny reuse race is acceptable)."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: every socket stays bound until all are picked, so the OS cannot hand out one
    port twice (fifty separate `free_port()` calls collide a few times in a hundred runs)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports
