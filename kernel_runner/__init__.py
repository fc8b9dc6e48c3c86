"""kernel-runner: a supervised, Backend.AI-compatible kernel runner built on pykka actors."""

from __future__ import annotations

from kernel_runner.config import RunnerConfig
from kernel_runner.runtime import RunnerHandle, RunnerStartError, start

__version__ = "0.1.0"

__all__ = ["RunnerConfig", "RunnerHandle", "RunnerStartError", "__version__", "start"]
