"""kernel-runner: a supervised, Backend.AI-compatible kernel runner built on pykka actors.

Importing the package imports nothing else: `kernel-runner client` and the start-up path load only what they use
(docs/architecture.md §2.1). `start`, `RunnerConfig` and friends are loaded on first use.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernel_runner.client import AgentClient
    from kernel_runner.config import RunnerConfig
    from kernel_runner.logs import configure_logging
    from kernel_runner.runtime import RunnerHandle, RunnerStartError, run, start

__version__ = "0.1.0"

__all__ = ["AgentClient", "RunnerConfig", "RunnerHandle", "RunnerStartError", "__version__", "configure_logging", "run",
           "start"]

_LAZY = {"RunnerConfig": "kernel_runner.config", "RunnerHandle": "kernel_runner.runtime",
         "RunnerStartError": "kernel_runner.runtime", "start": "kernel_runner.runtime", "run": "kernel_runner.runtime",
         "AgentClient": "kernel_runner.client", "configure_logging": "kernel_runner.logs"}


def _defer_loguru_asyncio() -> None:
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


_defer_loguru_asyncio()


def __getattr__(name: str) -> Any:
    """PEP 562: the public names come from their modules the first time someone asks for them."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kernel_runner' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
