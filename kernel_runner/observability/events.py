"""Lifecycle events: one log record per transition of a child, with flat fields that machines read.

Every transition ops care about (a child spawned, running, exited, waiting to restart, given up, stopped, healthy
or not, restarted by hand) is logged exactly once, through `emit`, by whoever decides it: the supervisor for the
tree, the health checker and the kernel for health. The record carries the fields below in loguru's `extra`, so
the human line, the `--log-json` line, the per-child ring buffer behind `kernel-runner ctl tail` and the metrics all
read the same event (docs/operations.md §2).
"""

from __future__ import annotations

import enum
import signal as signals
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loguru import Logger


class Event(enum.StrEnum):
    STARTING = "starting"  # a new incarnation's actor was created
    SPAWNED = "spawned"  # its process exists (the pid is known)
    RUNNING = "running"  # it reached RUNNING (a service's port opened, the kernel answered)
    EXITED = "exited"  # an incarnation ended: exit_code / signal when a process ended
    BACKOFF = "backoff"  # a restart is scheduled: attempt, delay_s
    FATAL = "fatal"  # the policy gave up on it
    RETRYING = "retrying"  # tried again after it gave up
    STOPPING = "stopping"  # asked to stop
    STOPPED = "stopped"  # stopped for good (not restarted)
    RESTARTED_BY_HAND = "restarted-by-hand"  # `ctl restart`: not counted towards give-up
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


# The flat fields an event may carry besides `ts`, `level`, `child`, `event` and `message` (docs/operations.md §2).
# `healthy`/`unhealthy` carry the probe's answer: which probe, its status code, or its exit code and an excerpt of
# its output, its error as `reason`, and how long it took.
EVENT_FIELDS = ("pid", "exit_code", "signal", "attempt", "delay_s", "generation", "uptime_s", "reason", "probe",
                "status_code", "excerpt", "latency_ms")


def signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def emit(log: Logger, level: str, event: Event, message: str, *args: Any, **fields: Any) -> None:
    """Log `event` once: `message` is the human line (loguru `{}` formatting), `fields` the flat machine fields
    (None values are left out; `signal` may be given as a number and is logged by name)."""
    if "signal" in fields and isinstance(fields["signal"], int):
        fields["signal"] = signal_name(fields["signal"])
    bound = {name: value for name, value in fields.items() if value is not None}
    unknown = set(bound) - set(EVENT_FIELDS)
    assert not unknown, f"not an event field: {sorted(unknown)}"
    log.bind(event=event.value, **bound).opt(depth=1).log(level, message, *args)


__all__ = ["EVENT_FIELDS", "Event", "emit", "signal_name"]
