"""Why a child ended: plain values that the restart policy classifies and the supervisor logs.

Each has a `kind`, a short fixed word that the `exited` event and the metrics carry (docs/operations.md §2).
"""

from __future__ import annotations

from typing import Union

import attrs


@attrs.frozen(kw_only=True)
class NormalExit:
    kind = "normal"

    def describe(self) -> str:
        return "normal"


@attrs.frozen(kw_only=True)
class ShutdownExit:
    """A stop someone asked for; a process owner gives the process's own end when it had one."""

    code: int | None = None
    signal: int | None = None
    kind = "shutdown"

    def describe(self) -> str:
        if self.signal is not None:
            return f"shutdown (process killed by signal {self.signal})"
        if self.code is not None:
            return f"shutdown (process exited with code {self.code})"
        return "shutdown"


@attrs.frozen(kw_only=True)
class ProcessDied:
    code: int
    signal: int | None = None

    @property
    def kind(self) -> str:
        return "killed" if self.signal is not None else "process-died"

    def describe(self) -> str:
        if self.signal is not None:
            return f"process killed by signal {self.signal}"
        return f"process exited with code {self.code}"


@attrs.frozen(kw_only=True)
class StartFailed:
    error: str
    kind = "start-failed"

    def describe(self) -> str:
        return f"start failed: {self.error}"


@attrs.frozen(kw_only=True)
class Crashed:
    error: str
    kind = "crashed"

    def describe(self) -> str:
        return f"crashed: {self.error}"


@attrs.frozen(kw_only=True)
class Unhealthy:
    detail: str
    kind = "unhealthy"

    def describe(self) -> str:
        return f"unhealthy: {self.detail}"


@attrs.frozen(kw_only=True)
class RestartRequested:
    """A restart an operator asked for (`kernel-runner ctl restart`): the `exited` record and `last_exit` say so
    instead of the shutdown it took."""

    why: str
    kind = "restart-requested"

    def describe(self) -> str:
        return f"restart requested: {self.why}"


# Every `kind` above: the `reason` of an `exited` event and a label value of the exits metric (bounded on purpose).
EXIT_KINDS = ("normal", "shutdown", "process-died", "killed", "crashed", "start-failed", "unhealthy",
              "restart-requested")

ExitReason = Union[NormalExit, ShutdownExit, ProcessDied, StartFailed, Crashed, Unhealthy, RestartRequested]

__all__ = [
    "EXIT_KINDS",
    "Crashed",
    "ExitReason",
    "NormalExit",
    "ProcessDied",
    "RestartRequested",
    "ShutdownExit",
    "StartFailed",
    "Unhealthy",
]
