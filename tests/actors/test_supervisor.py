"""The supervisor with real actors that crash, exit, refuse to stop, or fail to start."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from kernel_runner.actors.base import ChildContext, RouterLink, SupervisedActor
from kernel_runner.clock import REAL_CLOCK
from kernel_runner.config import RunnerConfig
from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    ChildState,
    ForwardToChild,
    NormalExit,
    Output,
    ShutdownExit,
    ShutdownTree,
    StartupStepDone,
    StatusReply,
    StatusRequest,
    StopChild,
    StopRequested,
    WhichChildrenQuery,
)
from kernel_runner.policy import Backoff, IntensityLimit
from kernel_runner.supervisor import ChildSpec, SupervisorActor
from kernel_runner.timers import Ticker
from tests.support.waiting import Recorder, wait_until

FAST = Backoff(initial_s=0.01, factor=2.0, cap_s=0.05, jitter=0.0)


class Crashy(SupervisedActor):
    """A child whose misbehaviour is chosen by the message it is told."""

    def __init__(self, *, ctx: ChildContext, recorder: pykka.ActorRef[Any], fail_start: bool = False,
                 ignore_stop: bool = False) -> None:
        super().__init__(ctx=ctx)
        self.recorder = recorder
        self.fail_start = fail_start
        self.ignore_stop = ignore_stop

    def start_child(self) -> None:
        if self.fail_start:
            raise RuntimeError("cannot start")
        self.set_state(ChildState.RUNNING, pid=1000 + self.generation)
        self.recorder.tell(("started", self.child_id, self.generation))

    def handle(self, message: object) -> object:
        match message:
            case "crash":
                raise RuntimeError("boom")
            case "exit":
                raise SystemExit(3)
            case "finish":
                self.finish(NormalExit())
            case "ping":
                self.recorder.tell(("pong", self.child_id, self.generation))
        return None

    def request_stop(self, message: StopRequested) -> None:
        self.recorder.tell(("stopping", self.child_id))
        if not self.ignore_stop:
            self.finish(ShutdownExit())


class Tree:
    def __init__(self, *, startup_steps: tuple[str, ...] = ()) -> None:
        self.recorder = Recorder()
        self.ticker = Ticker()
        self.link = RouterLink(8)
        self.link.attach(self.recorder.ref)  # the recorder stands in for the router: it receives ToAgent replies
        self.escalations: list[str] = []
        self.ref = SupervisorActor.start(
            config=RunnerConfig(lang="app"),
            clock=REAL_CLOCK,
            ticker=self.ticker,
            router_link=self.link,
            startup_steps=startup_steps,
            on_escalate=self.escalations.append,
        )

    def spec(self, name: str, **kwargs: Any) -> ChildSpec:
        actor_kwargs = {k: kwargs.pop(k) for k in ("fail_start", "ignore_stop") if k in kwargs}
        recorder = self.recorder.ref
        return ChildSpec(
            child_id=ChildId(name),
            factory=lambda ctx: Crashy.start(ctx=ctx, recorder=recorder, **actor_kwargs),
            backoff=kwargs.pop("backoff", FAST),
            intensity=kwargs.pop("intensity", IntensityLimit(max_restarts=5, period_s=60)),
            **kwargs,
        )

    def children(self) -> dict[str, Any]:
        return {c.child_id: c for c in self.ref.ask(WhichChildrenQuery(), timeout=2)}

    def started(self, name: str, generation: int) -> Any:
        return self.recorder.wait_for(lambda m: m == ("started", name, generation), timeout=5, what=f"{name} gen {generation}")

    def close(self) -> None:
        done = self.ref.ask(ShutdownTree(grace_s=2.0), timeout=2)
        assert done.wait(5)
        self.ref.stop(timeout=2)
        self.ticker.stop()
        self.recorder.stop()


@pytest.fixture
def tree() -> Iterator[Tree]:
    t = Tree()
    yield t
    t.close()


def test_crashed_child_is_restarted_as_a_new_generation(tree: Tree, log_lines: list[str]) -> None:
    tree.ref.tell(tree.spec("a"))
    tree.started("a", 1)
    tree.ref.tell(ForwardToChild(child_id=ChildId("a"), message="crash"))
    tree.started("a", 2)
    info = wait_until(lambda: tree.children()["a"] if tree.children()["a"].state is ChildState.RUNNING else None,
                      timeout=5, what="a running again")
    assert info.restarts == 1 and info.generation == 2 and info.pid == 1002
    assert info.last_exit == "crashed: RuntimeError('boom')"
    assert any("restart-scheduled" in line and "[a]" in line for line in log_lines)


def test_system_exit_in_one_child_leaves_the_others_serving(tree: Tree) -> None:
    tree.ref.tell(tree.spec("a"))
    tree.ref.tell(tree.spec("b"))
    tree.started("a", 1)
    tree.started("b", 1)
    tree.ref.tell(ForwardToChild(child_id=ChildId("a"), message="exit"))
    tree.started("a", 2)
    tree.ref.tell(ForwardToChild(child_id=ChildId("b"), message="ping"))
    tree.recorder.wait_for(lambda m: m == ("pong", "b", 1), timeout=5, what="b still answering")
    assert tree.children()["a"].last_exit == "crashed: SystemExit(3)"


def test_failing_on_start_is_reported_once_and_retried(tree: Tree) -> None:
    tree.ref.tell(tree.spec("a", fail_start=True, intensity=IntensityLimit(max_restarts=2, period_s=60)))
    info = wait_until(lambda: tree.children()["a"] if tree.children()["a"].state is ChildState.FATAL else None,
                      timeout=5, what="a FATAL")
    assert info.restarts == 2
    assert info.last_exit == "start failed: RuntimeError('cannot start')"


def test_flapping_child_ends_fatal_and_significant_escalates(tree: Tree, log_lines: list[str]) -> None:
    tree.ref.tell(tree.spec("a", significant=True, intensity=IntensityLimit(max_restarts=2, period_s=60)))
    for generation in (1, 2, 3):
        tree.started("a", generation)
        tree.ref.tell(ForwardToChild(child_id=ChildId("a"), message="crash"))
    wait_until(lambda: tree.children()["a"].state is ChildState.FATAL, timeout=5, what="FATAL")
    wait_until(lambda: tree.escalations, timeout=5, what="escalation")
    assert "a gave up" in tree.escalations[0]
    assert any("gave-up" in line for line in log_lines)


def test_transient_normal_exit_and_temporary_crash_are_not_restarted(tree: Tree) -> None:
    tree.ref.tell(tree.spec("t", restart="transient"))
    tree.ref.tell(tree.spec("tmp", restart="temporary"))
    tree.started("t", 1)
    tree.started("tmp", 1)
    tree.ref.tell(ForwardToChild(child_id=ChildId("t"), message="finish"))
    tree.ref.tell(ForwardToChild(child_id=ChildId("tmp"), message="crash"))
    wait_until(lambda: not tree.children(), timeout=5, what="both forgotten")


def test_messages_for_a_restarting_child_wait_for_the_next_generation(tree: Tree) -> None:
    tree.ref.tell(tree.spec("a", backoff=Backoff(initial_s=0.3, jitter=0.0)))
    tree.started("a", 1)
    tree.ref.tell(ForwardToChild(child_id=ChildId("a"), message="crash"))
    wait_until(lambda: tree.children()["a"].state is ChildState.BACKOFF, timeout=5, what="BACKOFF")
    tree.ref.tell(ForwardToChild(child_id=ChildId("a"), message="ping"))
    tree.recorder.wait_for(lambda m: m == ("pong", "a", 2), timeout=5, what="ping delivered to generation 2")


def test_messages_for_a_fatal_child_get_its_reject_reply(tree: Tree) -> None:
    spec = tree.spec("a", fail_start=True, intensity=IntensityLimit(max_restarts=0, period_s=60))
    import attrs

    spec = attrs.evolve(spec, reject=lambda msg: [Output(stream="stderr", data=f"rejected {msg}".encode())])
    tree.ref.tell(spec)
    wait_until(lambda: tree.children()["a"].state is ChildState.FATAL, timeout=5, what="FATAL")
    tree.ref.tell(ForwardToChild(child_id=ChildId("a"), message="ping"))
    tree.recorder.wait_for(lambda m: m == Output(stream="stderr", data=b"rejected ping"), timeout=5, what="reject reply")


def test_stop_child_stops_it_for_good(tree: Tree) -> None:
    tree.ref.tell(tree.spec("a"))
    tree.started("a", 1)
    tree.ref.tell(StopChild(child_id=ChildId("a"), reason="test"))
    tree.recorder.wait_for(lambda m: m == ("stopping", "a"), timeout=5)
    wait_until(lambda: "a" not in tree.children(), timeout=5, what="a forgotten")
    assert not any(m == ("started", "a", 2) for m in tree.recorder.messages)


def test_status_waits_for_startup_steps() -> None:
    tree = Tree(startup_steps=("bootstrap",))
    try:
        tree.ref.tell(StatusRequest())
        tree.ref.ask(WhichChildrenQuery(), timeout=2)  # the request has been handled once this returns
        assert not [m for m in tree.recorder.messages if isinstance(m, StatusReply)]
        tree.ref.tell(StartupStepDone(step="bootstrap"))
        reply = tree.recorder.wait_for(lambda m: isinstance(m, StatusReply), timeout=5, what="status")
        assert reply.ready is True
    finally:
        tree.close()


def test_shutdown_stops_higher_tiers_first_and_is_bounded_by_one_deadline() -> None:
    tree = Tree()
    tree.ref.tell(tree.spec("low", tier=1))
    tree.ref.tell(tree.spec("high", tier=3))
    tree.ref.tell(tree.spec("stuck", tier=2, ignore_stop=True))
    for name in ("low", "high", "stuck"):
        tree.started(name, 1)
    done: threading.Event = tree.ref.ask(ShutdownTree(grace_s=0.5), timeout=2)
    assert done.wait(3), "shutdown must end at its deadline even with a child that ignores the stop"
    stops = [m[1] for m in tree.recorder.messages if isinstance(m, tuple) and m[0] == "stopping"]
    assert stops[:2] == ["high", "stuck"]
    assert "low" not in stops, "tier 1 waits for tier 2, which never stopped by itself"
    tree.ref.stop(timeout=2)
    tree.ticker.stop()
    tree.recorder.stop()


def test_stop_child_not_permanent_restarts_it(tree: Tree) -> None:
    tree.ref.tell(tree.spec("a"))
    tree.started("a", 1)
    tree.ref.tell(StopChild(child_id=ChildId("a"), reason="refresh", permanent=False))
    tree.recorder.wait_for(lambda m: m == ("stopping", "a"), timeout=5)
    tree.started("a", 2)
    info = tree.children()["a"]
    assert info.restarts == 1 and "restart requested" in (info.last_exit or "")


def test_a_child_giving_up_releases_status_waiting_for_startup() -> None:
    tree = Tree(startup_steps=("bootstrap",))
    try:
        tree.ref.tell(StatusRequest())
        tree.ref.tell(tree.spec("lang", fail_start=True, intensity=IntensityLimit(max_restarts=1, period_s=60)))
        reply = tree.recorder.wait_for(lambda m: isinstance(m, StatusReply), timeout=5, what="status after give-up")
        assert reply.ready is True
    finally:
        tree.close()


class Quitter(SupervisedActor):
    """Ends itself on its first message; work told to it meanwhile must reach the next incarnation."""

    def __init__(self, *, ctx: ChildContext, recorder: pykka.ActorRef[Any]) -> None:
        super().__init__(ctx=ctx)
        self.recorder = recorder

    def start_child(self) -> None:
        self.set_state(ChildState.RUNNING)

    def handle(self, message: object) -> object:
        if self.generation == 1:
            self.finish(NormalExit())  # everything after this in the inbox arrives while it is ending
            return None
        self.recorder.tell(("got", self.generation, message))
        return None


def test_work_sent_to_an_ending_child_goes_to_the_next_incarnation(tree: Tree) -> None:
    from kernel_runner.ids import RunId
    from kernel_runner.messages import RunTask

    recorder = tree.recorder.ref
    tree.ref.tell(ChildSpec(child_id=ChildId("q"), factory=lambda ctx: Quitter.start(ctx=ctx, recorder=recorder),
                            backoff=FAST))
    wait_until(lambda: "q" in tree.children(), timeout=5, what="q started")
    tasks = [RunTask(run_id=RunId(900 + i), kind="exec", text=str(i)) for i in range(5)]
    tree.ref.tell(ForwardToChild(child_id=ChildId("q"), message="end now"))
    for task in tasks:
        tree.ref.tell(ForwardToChild(child_id=ChildId("q"), message=task))
    got = [tree.recorder.wait_for(lambda m, t=t: m == ("got", 2, t), timeout=5, what=f"{t.text} delivered")
           for t in tasks]
    assert [m[2] for m in got] == tasks, "handed-back work keeps its order"
