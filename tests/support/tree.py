"""A bare supervision tree for actor tests: the real supervisor and child directory, a Recorder as the router."""

from __future__ import annotations

import os
import threading
from typing import Any, cast

import pykka

from kernel_runner.config import RunnerConfig
from kernel_runner.context import RunnerContext
from kernel_runner.ids import LANG_CHILD, ChildId
from kernel_runner.supervision.actor import SupervisedActor
from kernel_runner.supervision.clock import REAL_CLOCK
from kernel_runner.supervision.directory import ChildDirectory
from kernel_runner.supervision.spec import (
    ChildContext,
    ChildInfo,
    ChildSpec,
    ChildState,
    ShutdownTree,
    StartAnswer,
    StartChild,
    TreeSnapshot,
    WhichChildrenQuery,
)
from kernel_runner.supervision.timers import Ticker
from kernel_runner.supervisor import SupervisorActor
from kernel_runner.wire.outbox import RouterLink
from kernel_runner.wire.status import StartupGate
from tests.support.waiting import Recorder, wait_until

ASK_S = 2.0


class ForwardingLang(SupervisedActor):
    """Stands in for the language runner: what other children tell LANG_CHILD lands in the recorder as ("lang", msg)."""

    def __init__(self, *, ctx: ChildContext, recorder: pykka.ActorRef[Any]) -> None:
        super().__init__(ctx=ctx)
        self.recorder = recorder

    def start_child(self) -> None:
        self.set_state(ChildState.RUNNING)

    def handle(self, message: object) -> object:
        self.recorder.tell(("lang", message))
        return None


class Tree:
    """Children are started with `start(spec)`; everything they send the agent lands in `recorder`."""

    def __init__(self, config: RunnerConfig | None = None, *, credits: int = 8) -> None:
        self.recorder = Recorder()
        self.ticker = Ticker()
        self.directory = ChildDirectory()
        self.link = RouterLink(credits)
        self.link.forward_to(self.recorder.ref)  # the recorder stands in for the router: it receives ToAgent replies
        self.runner = RunnerContext(
            config=config or RunnerConfig(lang="app"), router=self.link, env=dict(os.environ),
            runner_env=dict(os.environ), gate=StartupGate(), directory=self.directory,
        )
        self.snapshots: list[TreeSnapshot] = []
        self.escalations: list[str] = []
        self.supervisor = SupervisorActor.start(
            directory=self.directory, clock=REAL_CLOCK, ticker=self.ticker,
            on_tree_change=self.snapshots.append, on_escalate=self.escalations.append,
        )

    def start(self, spec: ChildSpec) -> StartAnswer:
        return cast(StartAnswer, self.supervisor.ask(StartChild(spec=spec), timeout=ASK_S))

    def start_forwarding_lang(self) -> StartAnswer:
        """A stand-in language runner as LANG_CHILD, for children that tell it (the terminal, the Polly actor)."""
        recorder = self.recorder.ref
        return self.start(ChildSpec(child_id=LANG_CHILD, factory=lambda ctx: ForwardingLang.start(ctx=ctx, recorder=recorder)))

    def tell_child(self, child_id: str, message: object) -> None:
        self.directory.tell(ChildId(child_id), message)

    def children(self) -> dict[str, ChildInfo]:
        infos = cast(list[ChildInfo], self.supervisor.ask(WhichChildrenQuery(), timeout=ASK_S))
        return {info.child_id: info for info in infos}

    def child(self, child_id: str) -> ChildInfo | None:
        return self.children().get(child_id)

    def wait_child(self, child_id: str, match: Any, *, what: str, timeout: float = 10.0) -> ChildInfo:
        """The child's row once `match(row)` holds."""

        def probe() -> ChildInfo | None:
            info = self.child(child_id)
            return info if info is not None and match(info) else None

        found = wait_until(probe, timeout=timeout, what=what)
        assert found is not None
        return found

    def close(self, grace_s: float = 3.0) -> None:
        try:
            done = cast(threading.Event, self.supervisor.ask(ShutdownTree(grace_s=grace_s), timeout=ASK_S))
            done.wait(grace_s + 2)
            self.supervisor.stop(timeout=ASK_S)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
        self.link.closed.set()
        self.ticker.stop()
        self.recorder.stop()
