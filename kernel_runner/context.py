"""What every domain actor gets from the runner, next to the supervision ChildContext: config, agent, environments."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from kernel_runner.config import RunnerConfig
from kernel_runner.directory import ChildDirectory
from kernel_runner.outbox import RouterLink
from kernel_runner.status import StartupGate


@attrs.frozen(kw_only=True)
class RunnerContext:
    config: RunnerConfig
    # Replies and output for the agent go through here (the router owns the socket; see outbox.py).
    router: RouterLink
    # The child environment (docs/protocol.md §1.4) for batch steps, compile-and-run queries and services.
    env: Mapping[str, str] = attrs.field(factory=dict)
    # The runner's own environment plus environ.txt: what the Jupyter kernel and the terminal shell get (§1.4).
    runner_env: Mapping[str, str] = attrs.field(factory=dict)
    gate: StartupGate = attrs.field(factory=StartupGate)
    # Children by id (the same directory the supervisor keeps current); used to build rejects that tell a sibling.
    directory: ChildDirectory = attrs.field(factory=ChildDirectory)
