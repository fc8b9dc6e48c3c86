"""loguru's asyncio helpers, deferred: the runner's logging never uses coroutine sinks (docs/architecture.md §2.1).

loguru imports asyncio at import time, and asyncio imports ssl: about 6 MB of an idle runner's RSS. The package root
calls `defer_loguru_asyncio()` before anything imports loguru. This module imports nothing of loguru or the runner.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any


def defer_loguru_asyncio() -> None:
    """loguru imports asyncio at import time, and asyncio imports ssl: about 6 MB of an idle runner's RSS, for
    coroutine sinks the runner never adds (docs/architecture.md §2.1). loguru's private `loguru._asyncio_loop` is
    registered first as a twin whose two functions import asyncio when called; any other name loads the real module.
    Only that private name is touched: `import asyncio` and `import ssl` work as usual for everyone else.
    """
    name = "loguru._asyncio_loop"
    if "loguru" in sys.modules or name in sys.modules:
        return
    twin = types.ModuleType(name)

    def get_running_loop() -> Any:
        import asyncio

        return asyncio.get_running_loop()

    def get_task_loop(task: Any) -> Any:
        return task.get_loop()

    def real_module(attribute: str) -> Any:
        """A name the twin lacks (a newer loguru): load loguru's own module and use it from now on."""
        if attribute.startswith("__"):  # the import system probing (`__path__`, …), not loguru asking
            raise AttributeError(attribute)
        package = sys.modules["loguru"]
        spec = importlib.machinery.PathFinder.find_spec(name, list(package.__path__))
        if spec is None or spec.loader is None:
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        real = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(real)
        sys.modules[name] = real
        return getattr(real, attribute)

    twin.get_running_loop = get_running_loop  # type: ignore[attr-defined]
    twin.get_task_loop = get_task_loop  # type: ignore[attr-defined]
    twin.__getattr__ = real_module  # type: ignore[method-assign]
    sys.modules[name] = twin


