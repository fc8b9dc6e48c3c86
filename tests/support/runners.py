"""A whole runner for one language plus an agent client, and the reads the language-runner tests share."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import attrs

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import RUN_END_TYPES, AgentClient, Reply, RunResult


@contextlib.contextmanager
def running(config: RunnerConfig, **start_kwargs: Any) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    handle = start(config, **start_kwargs)
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            yield handle, agent
    finally:
        handle.stop(timeout=5)


class LangRunners:
    """Starts runners for the languages a test names; all of them stop when the test ends."""

    def __init__(self, base: RunnerConfig) -> None:
        self.base = base
        self._stack = contextlib.ExitStack()
        self.handles: list[RunnerHandle] = []

    def start(self, lang: str, *, runtime_path: str | None = None, **start_kwargs: Any) -> AgentClient:
        config = attrs.evolve(self.base, lang=lang, runtime_path=runtime_path)
        handle, agent = self._stack.enter_context(running(config, **start_kwargs))
        self.handles.append(handle)
        return agent

    def close(self) -> None:
        self._stack.close()


def read_until(agent: AgentClient, needle: bytes, *, stream: str = "stdout", timeout: float = 30.0) -> list[Reply]:
    """Read records of the current run until `stream` has carried `needle`; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    records: list[Reply] = []
    seen = b""
    while needle not in seen:
        reply = agent.recv(timeout=max(0.0, deadline - time.monotonic()))
        if reply.type in RUN_END_TYPES:
            raise AssertionError(f"the run ended ({reply.type} {reply.payload!r}) before {needle!r}; got {records!r}")
        records.append(reply)
        if reply.type == stream:
            seen += reply.payload
    return records


def interrupt_run(agent: AgentClient, *, timeout: float = 15.0) -> tuple[RunResult, float]:
    """Send `interrupt` and read the run to its end; returns the result and the seconds it took."""
    started = time.monotonic()
    agent.interrupt()
    result = agent.collect_run(timeout=timeout)
    return result, time.monotonic() - started
