"""What every benchmark script shares: quiet logs, the machine line for RESULTS.md, median and p99 of samples."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence

from loguru import logger

from kernel_runner.logs import configure_logging


def silence_logs() -> None:
    """Route stdlib logging into loguru, then drop every sink: log formatting must not be what is measured."""
    configure_logging(debug=False, json_lines=False)
    logger.remove()


def machine_line() -> str:
    return (f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
            f"python {platform.python_version()}")


def median_p99(samples: Sequence[float]) -> tuple[float, float]:
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]
