"""Free TCP ports on 127.0.0.1 for services the tests spawn (the OS picks; the tiny reuse race is acceptable)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
