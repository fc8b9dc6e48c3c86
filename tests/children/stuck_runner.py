"""`kernel-runner` (cli.main, argv as usual) with one extra child whose actor thread never returns once asked to
stop: a bug of the kind that used to keep the process alive, and its ports bound, after the stop was logged."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pykka

from kernel_runner.cli import runner as cli
from kernel_runner.context import RunnerContext
from kernel_runner.ids import ChildId
from kernel_runner.runtime import root as runtime
from kernel_runner.supervision.actor import SupervisedActor
from kernel_runner.supervision.spec import ChildContext, ChildSpec, ChildState, StopRequested


class StuckOnStop(SupervisedActor):
    def start_child(self) -> None:
        self.set_state(ChildState.RUNNING)

    def request_stop(self, message: StopRequested) -> None:
        threading.Event().wait()  # the bug: a handler that blocks, so this non-daemon thread never ends


def stuck_child(_runner: RunnerContext) -> ChildSpec:
    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return StuckOnStop.start(ctx=ctx)

    return ChildSpec(child_id=ChildId("stuck"), factory=factory, shutdown_s=0.5, tier=3)


real_start = runtime.start


def start_with_stuck_child(config: Any, **kwargs: Any) -> runtime.RunnerHandle:
    return real_start(config, extra_children=[stuck_child], **kwargs)


if __name__ == "__main__":
    runtime.start = start_with_stuck_child  # cli.main imports `start` from runtime when it starts the runner
    sys.exit(cli.main())
