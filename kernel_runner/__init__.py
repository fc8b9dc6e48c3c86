"""kernel-runner: a supervised, Backend.AI-compatible kernel runner built on pykka actors.

Importing the package imports nothing else: `kernel-runner client` and the start-up path load only what they use
(docs/architecture.md §2.1). `start`, `RunnerConfig` and friends are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernel_runner.config import RunnerConfig
    from kernel_runner.runtime import RunnerHandle, RunnerStartError, start

__version__ = "0.1.0"

__all__ = ["RunnerConfig", "RunnerHandle", "RunnerStartError", "__version__", "start"]

_LAZY = {"RunnerConfig": "kernel_runner.config", "RunnerHandle": "kernel_runner.runtime",
         "RunnerStartError": "kernel_runner.runtime", "start": "kernel_runner.runtime"}


def __getattr__(name: str) -> Any:
    """PEP 562: the public names come from their modules the first time someone asks for them."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kernel_runner' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
