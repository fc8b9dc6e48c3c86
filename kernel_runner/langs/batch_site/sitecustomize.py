"""kernel-runner batch-input hook: routes input() through the runner's user-input socket (docs/protocol.md §5.6).

The runner puts this folder first on PYTHONPATH for batch-mode children only, and the hook stays dormant
unless _BACKEND_BATCH_MODE is a non-zero integer. Written for Python 2.7 and 3.x alike (type comments, no
f-strings), because it runs in whatever interpreter the user's image has.
"""

import os
import sys

_DEFAULT_SOCKET = "/tmp/bai-user-input.sock"
_UNAVAILABLE = "<user-input-unavailable>"


def _batch_mode():
    # type: () -> bool
    try:
        return int(os.environ.get("_BACKEND_BATCH_MODE", "0") or "0") != 0
    except ValueError:
        return False


def _read_input(prompt=""):
    # type: (object) -> str
    """One input op's text: the runner sends `waiting-input`, then writes the text and closes."""
    import socket

    if prompt:
        sys.stdout.write(str(prompt))
    sys.stdout.flush()
    path = os.environ.get("_BACKEND_INPUT_SOCKET") or _DEFAULT_SOCKET
    chunks = []  # type: list[bytes]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        while True:  # upstream did a single 1024-byte recv (docs/protocol.md §10.3 #29)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:  # a missing socket file included, unlike upstream
        return _UNAVAILABLE
    finally:
        sock.close()
    text = b"".join(chunks).decode("utf-8", "replace")
    # Like the builtin, drop the line end; upstream kept it.
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def _install():
    # type: () -> None
    import importlib

    module_name, func_name = ("builtins", "input") if sys.version_info[0] >= 3 else ("__builtin__", "raw_input")
    builtins_module = importlib.import_module(module_name)
    # builtins._input keeps the original, as upstream did, for code that wants the real stdin.
    builtins_module.__dict__["_input"] = getattr(builtins_module, func_name)
    setattr(builtins_module, func_name, _read_input)


def _chain_shadowed():
    # type: () -> None
    """Run the sitecustomize this file hides (an image's or a venv's), so being first takes nothing away."""
    if sys.version_info < (3, 5):  # noqa: UP036 - this file runs in the user's interpreter, not ours
        return
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if _batch_mode():
    _install()
_chain_shadowed()
