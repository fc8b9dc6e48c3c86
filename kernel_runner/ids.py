"""Distinct id types so a pid, a run id and a child id are never confused."""

from __future__ import annotations

import itertools
from typing import NewType

ChildId = NewType("ChildId", str)
RunId = NewType("RunId", int)
Pid = NewType("Pid", int)

_run_ids = itertools.count(1)


def next_run_id() -> RunId:
    """Run ids only need to be unique within one runner process."""
    return RunId(next(_run_ids))


LANG_CHILD = ChildId("lang")
ROUTER_CHILD = ChildId("router")
KERNEL_CHILD = ChildId("kernel")
TERMINAL_CHILD = ChildId("terminal")
POLLY_CHILD = ChildId("polly")  # vendor.aws_polly's query delegate (docs/protocol.md §8.5)


def service_child(name: str) -> ChildId:
    return ChildId(f"service:{name}")


def health_child(name: str) -> ChildId:
    return ChildId(f"health:{name}")
# The child that turns service ops (start-service, shutdown-service, get-apps, start-model-service) into children.
SERVICES_CHILD = ChildId("services")
