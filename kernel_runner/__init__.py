"""kernel-runner: a supervised, Backend.AI-compatible kernel runner built on pykka actors.

Importing the package imports nothing else of the runner but loguru's twin helper (observability/loguru_asyncio.py):
`kernel-runner client` and the start-up path load only what they use (docs/architecture.md §2.1). `start`,
`RunnerConfig` and friends are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kernel_runner.observability.loguru_asyncio import defer_loguru_asyncio

if TYPE_CHECKING:
    from kernel_runner.client import AgentClient
    from kernel_runner.config import RunnerConfig
    from kernel_runner.observability.logs import configure_logging
    from kernel_runner.runtime.root import RunnerHandle, RunnerStartError, run, start

__version__ = "0.1.0"

__all__ = ["AgentClient", "RunnerConfig", "RunnerHandle", "RunnerStartError", "__version__", "configure_logging", "run",
           "start"]

_LAZY = {"RunnerConfig": "kernel_runner.config", "RunnerHandle": "kernel_runner.runtime.root",
         "RunnerStartError": "kernel_runner.runtime.root", "start": "kernel_runner.runtime.root",
         "run": "kernel_runner.runtime.root", "AgentClient": "kernel_runner.client",
         "configure_logging": "kernel_runner.observability.logs"}


# Before anything imports loguru: the runner never uses loguru's asyncio helpers, and importing them costs ~6 MB.
defer_loguru_asyncio()


def __getattr__(name: str) -> Any:
    """PEP 562: the public names come from their modules the first time someone asks for them."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kernel_runner' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
