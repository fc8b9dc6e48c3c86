"""The control socket's wire format and where the socket lives (docs/operations.md §1). Standard library only.

One JSON object per line, both ways. A request is `{"cmd": "status", "args": {...}}`; a reply is `{"ok": true, ...}`
or `{"ok": false, "error": "one line"}`. `tail -f` answers once, then sends one `{"ok": true, "line": "..."}` per new
line until either side closes the connection.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# A request is a command and a few small arguments: anything longer is refused and the connection closed.
MAX_REQUEST_BYTES = 64 * 1024
# Replies carry the whole tree or up to 500 log lines of up to 2000 characters each.
MAX_REPLY_BYTES = 16 * 1024 * 1024
SOCKET_ENV = "KERNEL_RUNNER_CONTROL_SOCKET"
SOCKET_NAME = "control.sock"
# A runner whose default socket another runner answers on takes one of its own in the same folder:
# control-<pid>.sock (control-<pid>-<token>.sock when that is taken too: runners in other PID namespaces).
OWN_SOCKET_NAME = re.compile(r"control-\d+(-[0-9a-f]+)?\.sock")
# sockaddr_un's sun_path holds 108 bytes, the final NUL included.
MAX_SOCKET_PATH_BYTES = 107
COMMANDS = ("status", "start", "stop", "restart", "signal", "tail", "ready", "reload", "version")
# The longest a command waits for its outcome (its `timeout` argument, `ctl --timeout`).
MAX_WAIT_S = 300.0
DEFAULT_TAIL_LINES = 20  # `tail` without `lines`


class ProtocolError(ValueError):
    """A request the server cannot read (not JSON, not an object, no command): answered with an error reply."""


def default_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """The path every runner started from the command line uses unless told otherwise, and `ctl` looks at:
    $XDG_RUNTIME_DIR/kernel-runner/control.sock, else /tmp/kernel-runner-<uid>/control.sock."""
    env = os.environ if environ is None else environ
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return Path(runtime_dir) / "kernel-runner" / SOCKET_NAME
    return Path(f"/tmp/kernel-runner-{os.getuid()}") / SOCKET_NAME


def own_socket_path(default: Path, pid: int, token: str | None = None) -> Path:
    """Where a runner whose default socket is taken listens instead (same folder, named by its pid)."""
    return default.with_name(f"control-{pid}{'-' + token if token else ''}.sock")


def runner_sockets(folder: Path) -> list[Path]:
    """The sockets runners at the default place made in `folder`: control.sock first, then control-<pid>*.sock.
    Some may be a dead runner's (nobody listens): `ctl` asks each before it counts it."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    own = sorted(name for name in names if OWN_SOCKET_NAME.fullmatch(name))
    return [folder / name for name in ([SOCKET_NAME] if SOCKET_NAME in names else []) + own]


def configured_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """$KERNEL_RUNNER_CONTROL_SOCKET when set, else the default path (a command-line option wins over both)."""
    env = os.environ if environ is None else environ
    given = env.get(SOCKET_ENV)
    return Path(given) if given else default_socket_path(env)


def encode(message: Mapping[str, Any]) -> bytes:
    """One line. Values JSON cannot carry (a path, an enum in a child's extra) are sent as their text."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8") + b"\n"


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(command, arguments) of one request line; ProtocolError says what is wrong with it."""
    request = _json_line(line, "the request")
    if not isinstance(request, dict):
        raise ProtocolError(f"the request must be a JSON object, got {type(request).__name__}")
    command = request.get("cmd")
    if not isinstance(command, str):
        raise ProtocolError('the request has no "cmd" string')
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(f'"args" must be a JSON object, got {type(args).__name__}')
    return command, args


def decode_reply(line: bytes) -> dict[str, Any]:
    reply = _json_line(line, "the runner's reply")
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError(f'the runner\'s reply is not an object with "ok": {line[:200]!r}')
    return reply


def _json_line(line: bytes, what: str) -> Any:
    try:
        return json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None


def error_reply(text: str) -> dict[str, Any]:
    return {"ok": False, "error": text}


def format_duration(seconds: float) -> str:
    """supervisorctl's uptime: `0:01:23`, and `1d 2:03:04` past a day."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


__all__ = [
    "COMMANDS",
    "DEFAULT_TAIL_LINES",
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_SOCKET_PATH_BYTES",
    "MAX_WAIT_S",
    "OWN_SOCKET_NAME",
    "SOCKET_ENV",
    "ProtocolError",
    "configured_socket_path",
    "decode_reply",
    "decode_request",
    "default_socket_path",
    "encode",
    "error_reply",
    "format_duration",
    "own_socket_path",
    "runner_sockets",
]
