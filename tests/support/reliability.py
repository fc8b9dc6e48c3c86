"""What every fault and load test checks after the fault: the agent's view of the runner (docs/protocol.md §3.6)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kernel_runner.client import AgentClient, Reply, RunResult
from tests.support.runner_process import status_children
from tests.support.waiting import wait_until

RUN_END_TYPES = frozenset({"finished", "clean-finished", "build-finished"})
CORE_CHILDREN = ("router", "lang", "services")
KERNEL_READY_S = 60.0
# A service start is answered within its launch timeout (8 s); this only bounds a lost answer on a very busy machine.
START_TIMEOUT_S = 60.0


def fence(agent: AgentClient, timeout: float = 20.0) -> list[Reply]:
    """Send `status` and return everything that arrived before its reply. Replies of one socket arrive in the order
    the runner sent them, so a second `finished` for a run that already ended would show up here."""
    agent.send("status")
    deadline = time.monotonic() + timeout
    seen: list[Reply] = []
    while True:
        reply = agent.recv(timeout=max(0.0, deadline - time.monotonic()))
        if reply.type == "status":
            return seen
        seen.append(reply)


def assert_no_stray_replies(agent: AgentClient, *, allowed: frozenset[str] = frozenset()) -> None:
    """Nothing may come that no request asked for: no second `finished`, no late output of an ended run."""
    stray = [(r.type, r.payload[:120]) for r in fence(agent) if r.type not in allowed]
    assert not stray, f"replies nobody asked for: {stray}"


def children(agent: AgentClient, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    return status_children(agent.status(timeout=timeout))


def wait_row(agent: AgentClient, child_id: str, match: Callable[[dict[str, Any]], bool], *, timeout: float,
             what: str) -> dict[str, Any]:
    """The child's `status` row once `match(row)` holds (docs/protocol.md §9.1)."""

    def probe() -> dict[str, Any] | None:
        row = children(agent).get(child_id)
        return row if row is not None and match(row) else None

    found = wait_until(probe, timeout=timeout, what=what)
    assert found is not None
    return found


def assert_core_running(agent: AgentClient, *, restarts: int = 0) -> dict[str, dict[str, Any]]:
    """The supervision tree is within policy: the three core children run, restarted at most `restarts` times."""
    rows = children(agent)
    for child in CORE_CHILDREN:
        assert rows[child]["state"] == "RUNNING", rows[child]
        assert rows[child]["restarts"] <= restarts, rows[child]
    return rows


def one_run(agent: AgentClient, kind: str, payload: str | bytes, *, timeout: float = 30.0) -> RunResult:
    agent.send(kind, payload)
    return agent.collect_run(timeout=timeout)


def ready_kernel(agent: AgentClient, *, newer_than: int = 0) -> dict[str, Any]:
    """The kernel's row once it is ready, and of a generation after `newer_than` (a restarted kernel)."""
    return wait_row(agent, "kernel", lambda row: row["state"] == "RUNNING" and bool(row.get("extra", {}).get("ready"))
                    and row["generation"] > newer_than, timeout=KERNEL_READY_S, what="a ready kernel")


def kernel_pid(row: dict[str, Any]) -> int:
    pid = row["extra"]["kernel_pid"]
    assert isinstance(pid, int)
    return pid
