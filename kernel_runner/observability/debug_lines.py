"""The runner's DEBUG lines exist only when someone asked for them, so the runner as a library stays quiet.

loguru has one set of handlers per process, and the default one writes everything from DEBUG up to stderr. A program
that embeds the runner and never configured loguru would get every phase change and queued run of the runner on its
stderr. loguru can switch a package off by name (`logger.disable`), but not below a level, and switching the package
off would also starve the runner's own sinks (`ctl tail`, the per-child files, the metrics' exit counts). So the
runner makes no DEBUG record at all unless debug lines were asked for: by `configure_logging(debug=True)` (the CLI's
`--debug`) or by a running runner whose `RunnerConfig.debug` is set (docs/operations.md §6). INFO and above are
logged as always, to whatever handlers the host has.

Every DEBUG line of the package goes through `debug` (or `log_at` for a level known only at run time);
tests/unit/test_logs.py keeps it that way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loguru import Logger

_lock = threading.Lock()
_configured = False
_holders = 0
# Read without the lock on every debug call: a plain bool, written only under the lock.
_on = False


def enabled() -> bool:
    return _on


def debug(log: Logger, message: str, *args: Any) -> None:
    """`log.debug(message, *args)` when debug lines are on; nothing at all (no record) otherwise."""
    if _on:
        log.opt(depth=1).debug(message, *args)


def log_at(log: Logger, level: str, message: str, *args: Any) -> None:
    """`log.log(level, ...)` for a level chosen at run time: a DEBUG one only when debug lines are on."""
    if level != "DEBUG" or _on:
        log.opt(depth=1).log(level, message, *args)


def configure(on: bool) -> None:
    """What the process's logging set-up asked for (`configure_logging`)."""
    global _configured
    with _lock:
        _configured = on
        _update()


def hold() -> Callable[[], None]:
    """Debug lines on while a runner with `debug` set runs; call the returned function (once) when it stops."""
    global _holders
    released = False
    with _lock:
        _holders += 1
        _update()

    def release() -> None:
        global _holders
        nonlocal released
        with _lock:
            if not released:
                released = True
                _holders -= 1
                _update()

    return release


def _update() -> None:
    global _on
    _on = _configured or _holders > 0


__all__ = ["configure", "debug", "enabled", "hold", "log_at"]
