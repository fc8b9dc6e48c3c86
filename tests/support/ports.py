"""Free TCP ports on 127.0.0.1 for services the tests spawn (the OS picks; the tiny reuse race is acceptable)."""

from __future__ import annotations

import errno
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


def connect_error(port: int) -> int:
    """The errno of a TCP connect to 127.0.0.1:port (0: something accepted it)."""
    with socket.socket() as sock:
        sock.settimeout(2.0)
        return sock.connect_ex(("127.0.0.1", port))


def refused(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port: a connect is refused at once."""
    return connect_error(port) == errno.ECONNREFUSED


def port_is_free(port: int) -> bool:
    """127.0.0.1:port can be bound again (nothing holds it, listening or not)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
