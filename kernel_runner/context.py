"""What every domain actor gets from the runner, next to the supervision ChildContext: config, agent, environments."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from kernel_runner.config import RunnerConfig
from kernel_runner.generations import DEFAULT_ROW, GenerationChoice, GenerationTracker
from kernel_runner.supervision.directory import ChildDirectory
from kernel_runner.wire.outbox import RouterLink
from kernel_runner.wire.status import StartupGate


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
    # The agent generation in force (docs/protocol.md §12); evidence from requests can raise it while the runner runs.
    generations: GenerationTracker = attrs.field(
        factory=lambda: GenerationTracker(GenerationChoice(row=DEFAULT_ROW, pinned=False, reason="default")))

    def service_reply_within_s(self) -> float:
        """When `service-result` must be sent by: the setting, else before this generation's agent gives up."""
        configured = self.config.service_launch_timeout_s
        return configured if configured is not None else self.generations.choice.row.service_reply_within_s
