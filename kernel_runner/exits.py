"""Why a child ended: plain values that the restart policy classifies and the supervisor logs."""

from __future__ import annotations

from typing import Union

import attrs


@attrs.frozen(kw_only=True)
class NormalExit:
    def describe(self) -> str:
        return "normal"


@attrs.frozen(kw_only=True)
class ShutdownExit:
    def describe(self) -> str:
        return "shutdown"


@attrs.frozen(kw_only=True)
class ProcessDied:
    code: int
    signal: int | None = None

    def describe(self) -> str:
        if self.signal is not None:
            return f"process killed by signal {self.signal}"
        return f"process exited with code {self.code}"


@attrs.frozen(kw_only=True)
class StartFailed:
    error: str

    def describe(self) -> str:
        return f"start failed: {self.error}"


@attrs.frozen(kw_only=True)
class Crashed:
    error: str

    def describe(self) -> str:
        return f"crashed: {self.error}"


@attrs.frozen(kw_only=True)
class Unhealthy:
    detail: str

    def describe(self) -> str:
        return f"unhealthy: {self.detail}"


@attrs.frozen(kw_only=True)
class RestartRequested:
    """A restart someone asked for (a liveness verdict, an operator); counted like any other restart."""

    why: str

    def describe(self) -> str:
        return f"restart requested: {self.why}"


ExitReason = Union[NormalExit, ShutdownExit, ProcessDied, StartFailed, Crashed, Unhealthy, RestartRequested]

__all__ = [
    "Crashed",
    "ExitReason",
    "NormalExit",
    "ProcessDied",
    "RestartRequested",
    "ShutdownExit",
    "StartFailed",
    "Unhealthy",
]
