"""The generic supervisor with real actors that crash, exit, refuse to stop, or fail to start."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pykka
import pytest

from kernel_runner.ids import ChildId
from kernel_runner.messages import Output
from kernel_runner.supervision import table as table_module
from kernel_runner.supervision.actor import SupervisedActor
from kernel_runner.supervision.exits import Crashed, NormalExit, ShutdownExit, Unhealthy
from kernel_runner.supervision.policy import NO_FATAL_RETRY, Backoff, IntensityLimit
from kernel_runner.supervision.spec import (
    AlreadyStarted,
    ChildContext,
    ChildSpec,
    ChildState,
    RestartChild,
    ShutdownTree,
    Started,
    StartRefused,
    StopChild,
    StopRequested,
)
from kernel_runner.supervision.table import STOP_MARGIN_S
from tests.support.tree import Tree
from tests.support.waiting import wait_until

FAST = Backoff(initial_s=0.01, factor=2.0, cap_s=0.05, jitter=0.0)


class Crashy(SupervisedActor):
    """A child whose misbehaviour is chosen by the message it is told."""

    def __init__(self, *, ctx: ChildContext, recorder: pykka.ActorRef[Any], fail_start: bool = False,
                 ignore_stop: bool = False, fail_after_first: bool = False) -> None:
        super().__init__(ctx=ctx)
        self.recorder = recorder
        self.fail_start = fail_start or (fail_after_first and ctx.generation > 1)
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
        self.recorder.tell(("stop-grace", self.child_id, message.grace_s))
        if not self.ignore_stop:
            self.finish(ShutdownExit())


class Harness(Tree):
    def spec(self, name: str, **kwargs: Any) -> ChildSpec:
        actor_kwargs = {k: kwargs.pop(k) for k in ("fail_start", "ignore_stop", "fail_after_first") if k in kwargs}
        recorder = self.recorder.ref
        return ChildSpec(
            child_id=ChildId(name),
            factory=lambda ctx: Crashy.start(ctx=ctx, recorder=recorder, **actor_kwargs),
            backoff=kwargs.pop("backoff", FAST),
            intensity=kwargs.pop("intensity", IntensityLimit(max_restarts=5, period_s=60)),
            **kwargs,
        )

    def started(self, name: str, generation: int) -> Any:
        return self.recorder.wait_for(lambda m: m == ("started", name, generation), timeout=5, what=f"{name} gen {generation}")

    def state_of(self, name: str, state: ChildState) -> Any:
        return self.wait_child(name, lambda c: c.state is state, what=f"{name} {state.value}", timeout=5)


@pytest.fixture
def tree() -> Iterator[Harness]:
    t = Harness()
    yield t
    t.close()


def test_crashed_child_is_restarted_as_a_new_generation(tree: Harness, log_lines: list[str]) -> None:
    assert tree.start(tree.spec("a")) == Started(child_id=ChildId("a"), generation=1)
    tree.started("a", 1)
    tree.tell_child("a", "crash")
    tree.started("a", 2)
    info = wait_until(lambda: tree.children()["a"] if tree.children()["a"].state is ChildState.RUNNING else None,
                      timeout=5, what="a running again")
    assert info.restarts == 1 and info.generation == 2 and info.pid == 1002
    assert info.last_exit == "crashed: RuntimeError('boom')"
    assert any("restarting in" in line and "[a]" in line for line in log_lines)


def test_system_exit_in_one_child_leaves_the_others_serving(tree: Harness) -> None:
    tree.start(tree.spec("a"))
    tree.start(tree.spec("b"))
    tree.started("a", 1)
    tree.started("b", 1)
    tree.tell_child("a", "exit")
    tree.started("a", 2)
    tree.tell_child("b", "ping")
    tree.recorder.wait_for(lambda m: m == ("pong", "b", 1), timeout=5, what="b still answering")
    assert tree.children()["a"].last_exit == "crashed: SystemExit(3)"


def test_failing_on_start_is_reported_once_and_retried(tree: Harness) -> None:
    tree.start(tree.spec("a", fail_start=True, intensity=IntensityLimit(max_restarts=2, period_s=60)))
    info = tree.state_of("a", ChildState.FATAL)
    assert info.restarts == 2 and info.generation == 3
    assert info.last_exit == "start failed: RuntimeError('cannot start')"


def test_a_failed_first_start_is_not_retried_when_the_spec_says_so(tree: Harness, log_lines: list[str]) -> None:
    tree.start(tree.spec("once", fail_start=True, retry_failed_start=False))
    wait_until(lambda: "once" not in tree.children(), timeout=5, what="the child forgotten")
    assert any("its first start failed" in line and "not retried" in line for line in log_lines)
    # Once it has run, a failing restart backs off as usual: the rule is about the first start only.
    tree.start(tree.spec("later", fail_after_first=True, retry_failed_start=False,
                         intensity=IntensityLimit(max_restarts=1, period_s=60)))
    tree.started("later", 1)
    tree.tell_child("later", "crash")
    # Generation 2 fails to start: retried (not forgotten), so with one restart allowed it ends FATAL.
    info = tree.state_of("later", ChildState.FATAL)
    assert (info.generation, info.restarts) == (2, 1)


def test_flapping_child_ends_fatal_and_shut_down_runner_escalates(tree: Harness, log_lines: list[str]) -> None:
    tree.start(tree.spec("a", on_give_up="shut_down_runner", intensity=IntensityLimit(max_restarts=2, period_s=60)))
    for generation in (1, 2, 3):
        tree.started("a", generation)
        tree.tell_child("a", "crash")
    tree.state_of("a", ChildState.FATAL)
    wait_until(lambda: tree.escalations, timeout=5, what="escalation")
    assert "a gave up" in tree.escalations[0]
    assert any("gave up" in line for line in log_lines)


def test_transient_normal_exit_and_temporary_crash_are_not_restarted(tree: Harness) -> None:
    tree.start(tree.spec("t", restart="transient"))
    tree.start(tree.spec("tmp", restart="temporary"))
    tree.started("t", 1)
    tree.started("tmp", 1)
    tree.tell_child("t", "finish")
    tree.tell_child("tmp", "crash")
    wait_until(lambda: not tree.children(), timeout=5, what="both forgotten")


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"restart": "temporary", "on_give_up": "shut_down_runner"}, "never gives up"),
        ({"restart": "sometimes"}, "restart must be one of"),
        ({"on_give_up": "panic"}, "on_give_up must be one of"),
        ({"shutdown_s": -1.0}, "shutdown_s must be >= 0"),
        ({"intensity": IntensityLimit(max_restarts=-1, period_s=60)}, "intensity.max_restarts"),
        ({"intensity": IntensityLimit(max_restarts=1, period_s=0)}, "intensity.period_s"),
        ({"backoff": Backoff(initial_s=2.0, cap_s=1.0)}, "backoff.cap_s"),
        ({"backoff": Backoff(jitter=1.5)}, "backoff.jitter"),
        ({"binds_to": ChildId("a")}, "bound to itself"),
    ],
)
def test_bad_specs_are_refused_when_added_with_a_clear_reason(tree: Harness, fields: dict[str, Any],
                                                              complaint: str) -> None:
    answer = tree.start(attrs.evolve(tree.spec("a"), **fields))
    assert isinstance(answer, StartRefused) and complaint in answer.reason, answer
    assert "a" not in tree.children()


def test_already_started_is_an_answer_and_a_fatal_child_starts_afresh(tree: Harness) -> None:
    tree.start(tree.spec("a"))
    tree.started("a", 1)
    assert tree.start(tree.spec("a")) == AlreadyStarted(child_id=ChildId("a"), state=ChildState.RUNNING)
    tree.start(tree.spec("f", fail_start=True, intensity=IntensityLimit(max_restarts=0, period_s=60)))
    tree.state_of("f", ChildState.FATAL)
    assert isinstance(tree.start(tree.spec("f")), Started)
    # Afresh: a new window and generation 1, but the restart count goes on (this start is one): it never goes back.
    assert tree.started("f", 1) and tree.state_of("f", ChildState.RUNNING).restarts == 1


def test_a_factory_that_raises_is_refused(tree: Harness) -> None:
    def broken(ctx: ChildContext) -> pykka.ActorRef[Any]:
        raise ValueError("no such thing")

    answer = tree.start(ChildSpec(child_id=ChildId("x"), factory=broken))
    assert isinstance(answer, StartRefused) and "no such thing" in answer.reason
    assert "x" not in tree.children()


def test_messages_for_a_restarting_child_wait_for_the_next_generation(tree: Harness) -> None:
    tree.start(tree.spec("a", backoff=Backoff(initial_s=0.3, jitter=0.0)))
    tree.started("a", 1)
    tree.tell_child("a", "crash")
    tree.state_of("a", ChildState.BACKOFF)
    tree.tell_child("a", "ping")
    tree.recorder.wait_for(lambda m: m == ("pong", "a", 2), timeout=5, what="ping delivered to generation 2")


def test_messages_for_a_fatal_child_get_its_reject_reply(tree: Harness) -> None:
    link = tree.link
    spec = attrs.evolve(
        tree.spec("a", fail_start=True, intensity=IntensityLimit(max_restarts=0, period_s=60)),
        reject=lambda msg: link.tell(Output(stream="stderr", data=f"rejected {msg}".encode())),
    )
    tree.start(spec)
    tree.state_of("a", ChildState.FATAL)
    tree.tell_child("a", "ping")
    tree.recorder.wait_for(lambda m: m == Output(stream="stderr", data=b"rejected ping"), timeout=5, what="reject reply")


def test_stop_child_stops_it_for_good_and_forgets_it(tree: Harness) -> None:
    tree.start(tree.spec("a"))
    tree.started("a", 1)
    tree.supervisor.tell(StopChild(child_id=ChildId("a"), reason="test"))
    tree.recorder.wait_for(lambda m: m == ("stopping", "a"), timeout=5)
    wait_until(lambda: "a" not in tree.children(), timeout=5, what="a forgotten")
    assert not any(m == ("started", "a", 2) for m in tree.recorder.messages)


def test_stop_child_keeping_its_row_leaves_it_stopped(tree: Harness) -> None:
    link = tree.link
    tree.start(attrs.evolve(tree.spec("a"),
                            reject=lambda msg: link.tell(Output(stream="stderr", data=f"rejected {msg}".encode()))))
    tree.started("a", 1)
    tree.supervisor.tell(StopChild(child_id=ChildId("a"), reason="test", keep_row=True))
    tree.recorder.wait_for(lambda m: m == ("stopping", "a"), timeout=5)
    info = tree.state_of("a", ChildState.STOPPED)
    assert (info.pid, info.generation, info.last_exit, info.running_since) == (None, 1, "shutdown", None)
    assert not any(m == ("started", "a", 2) for m in tree.recorder.messages)
    tree.tell_child("a", "ping")  # a stopped child takes no messages: its reject answers them
    tree.recorder.wait_for(lambda m: m == Output(stream="stderr", data=b"rejected ping"), timeout=5, what="reject")
    tree.supervisor.tell(StopChild(child_id=ChildId("a"), reason="again", keep_row=True))  # stopping it again changes nothing
    tree.supervisor.tell(RestartChild(child_id=ChildId("a"), reason=Unhealthy(detail="x")))  # not by hand: ignored
    assert tree.state_of("a", ChildState.STOPPED).generation == 1


def test_a_stopped_child_started_by_hand_runs_its_own_spec_again(tree: Harness) -> None:
    tree.start(tree.spec("a", intensity=IntensityLimit(max_restarts=1, period_s=60)))
    tree.started("a", 1)
    tree.tell_child("a", "crash")
    tree.started("a", 2)
    tree.supervisor.tell(StopChild(child_id=ChildId("a"), reason="test", keep_row=True))
    tree.state_of("a", ChildState.STOPPED)
    tree.supervisor.tell(RestartChild(child_id=ChildId("a"), reason=Crashed(error="by hand"), by_hand=True))
    tree.started("a", 3)  # the same record: its generations go on
    info = tree.state_of("a", ChildState.RUNNING)
    assert (info.restarts, info.pid) == (2, 1003), "a restart, and the count goes on, as after giving up"
    tree.tell_child("a", "ping")
    tree.recorder.wait_for(lambda m: m == ("pong", "a", 3), timeout=5, what="messages reach it again")


def test_a_start_of_a_stopped_childs_id_replaces_its_row(tree: Harness) -> None:
    tree.start(tree.spec("a"))
    tree.started("a", 1)
    tree.supervisor.tell(StopChild(child_id=ChildId("a"), reason="test", keep_row=True))
    tree.state_of("a", ChildState.STOPPED)
    assert tree.start(tree.spec("a")) == Started(child_id=ChildId("a"), generation=1)
    info = tree.state_of("a", ChildState.RUNNING)
    assert (info.generation, info.restarts) == (1, 1), "a new spec, and the restart count goes on"


def test_stopped_rows_are_bounded_oldest_first(tree: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "MAX_STOPPED_ROWS", 2)
    for name in ("a", "b", "c"):
        tree.start(tree.spec(name))
        tree.started(name, 1)
        tree.supervisor.tell(StopChild(child_id=ChildId(name), reason="test", keep_row=True))
        tree.state_of(name, ChildState.STOPPED)
    wait_until(lambda: sorted(tree.children()) == ["b", "c"], timeout=5, what="a dropped")


def test_a_child_that_ignores_its_stop_has_its_actor_stopped_after_the_grace(tree: Harness, log_lines: list[str]) -> None:
    tree.start(tree.spec("stuck", ignore_stop=True, shutdown_s=0.1))
    tree.started("stuck", 1)
    tree.supervisor.tell(StopChild(child_id=ChildId("stuck"), reason="test"))
    wait_until(lambda: "stuck" not in tree.children(), timeout=0.1 + STOP_MARGIN_S + 5, what="stuck forgotten")
    assert any("did not stop within" in line and "[stuck]" in line for line in log_lines)


def test_binds_to_stops_the_bound_child_with_its_target_and_starts_it_with_it(tree: Harness) -> None:
    tree.start(tree.spec("server"))
    tree.start(tree.spec("checker", binds_to=ChildId("server")))
    tree.started("server", 1)
    tree.started("checker", 1)
    tree.supervisor.tell(StopChild(child_id=ChildId("server"), reason="test", keep_row=True))
    tree.recorder.wait_for(lambda m: m == ("stopping", "checker"), timeout=5, what="the bound child stopped")
    wait_until(lambda: [c.state for c in tree.children().values()] == [ChildState.STOPPED] * 2, timeout=5,
               what="both stopped")
    tree.supervisor.tell(RestartChild(child_id=ChildId("server"), reason=Crashed(error="by hand"), by_hand=True))
    tree.started("server", 2)
    tree.started("checker", 2)
    # A new start of the server's id replaces its row, and the rows of its helpers go with it.
    tree.supervisor.tell(StopChild(child_id=ChildId("server"), reason="test", keep_row=True))
    tree.state_of("checker", ChildState.STOPPED)
    tree.start(tree.spec("server"))
    wait_until(lambda: list(tree.children()) == ["server"], timeout=5, what="the checker's row gone")


def test_binds_to_forgets_the_bound_child_when_its_target_is_gone(tree: Harness) -> None:
    tree.start(tree.spec("server", restart="temporary"))
    tree.start(tree.spec("checker", binds_to=ChildId("server")))
    tree.started("server", 1)
    tree.started("checker", 1)
    tree.tell_child("server", "finish")  # a temporary child is forgotten when it ends: its row goes
    tree.recorder.wait_for(lambda m: m == ("stopping", "checker"), timeout=5, what="the bound child stopped")
    wait_until(lambda: not tree.children(), timeout=5, what="both gone")


def test_restart_child_restarts_it_and_counts_towards_giving_up(tree: Harness) -> None:
    tree.start(tree.spec("a", intensity=IntensityLimit(max_restarts=1, period_s=60)))
    tree.started("a", 1)
    tree.supervisor.tell(RestartChild(child_id=ChildId("a"), reason=Unhealthy(detail="3 failed probes")))
    tree.recorder.wait_for(lambda m: m == ("stopping", "a"), timeout=5)
    tree.started("a", 2)
    info = tree.state_of("a", ChildState.RUNNING)
    assert info.restarts == 1 and info.last_exit == "unhealthy: 3 failed probes"
    tree.supervisor.tell(RestartChild(child_id=ChildId("a"), reason=Crashed(error="by hand")))
    assert tree.state_of("a", ChildState.FATAL).last_exit == "crashed: by hand"


def test_every_change_pushes_a_tree_snapshot(tree: Harness) -> None:
    tree.start(tree.spec("a"))
    tree.started("a", 1)
    tree.tell_child("a", "crash")
    tree.started("a", 2)

    def states() -> list[str]:
        return [s.get(ChildId("a")).state.value for s in list(tree.snapshots) if s.get(ChildId("a")) is not None]

    wait_until(lambda: states()[-1] == "RUNNING" and "BACKOFF" in states(), timeout=5, what="snapshots")
    versions = [s.version for s in list(tree.snapshots)]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert states()[:2] == ["STARTING", "RUNNING"]


def test_unknown_messages_are_logged_and_the_supervisor_keeps_going(tree: Harness, log_lines: list[str]) -> None:
    tree.supervisor.tell(object())
    tree.start(tree.spec("a"))
    tree.started("a", 1)
    assert any("ignored unexpected message object" in line for line in log_lines)


def test_shutdown_stops_higher_tiers_first_and_is_bounded_by_one_deadline() -> None:
    tree = Harness()
    tree.start(tree.spec("low", tier=1))
    tree.start(tree.spec("high", tier=3))
    tree.start(tree.spec("stuck", tier=2, ignore_stop=True, shutdown_s=30.0))
    for name in ("low", "high", "stuck"):
        tree.started(name, 1)
    done: threading.Event = tree.supervisor.ask(ShutdownTree(grace_s=0.5), timeout=2)
    assert done.wait(3), "shutdown must end at its deadline even with a child that ignores the stop"
    stops = [m[1] for m in tree.recorder.messages if isinstance(m, tuple) and m[0] == "stopping"]
    assert stops[:2] == ["high", "stuck"]
    assert "low" not in stops, "tier 1 waits for tier 2, which never stopped by itself"
    tree.close()


def test_no_child_gets_a_grace_that_reaches_past_the_shutdown_deadline() -> None:
    tree = Harness()
    tree.start(tree.spec("slow", shutdown_s=30.0))
    tree.started("slow", 1)
    done: threading.Event = tree.supervisor.ask(ShutdownTree(grace_s=2.0), timeout=2)
    _, _, grace = tree.recorder.wait_for(lambda m: m[:2] == ("stop-grace", "slow"), timeout=5, what="the stop request")
    assert grace <= 2.0 - STOP_MARGIN_S, "its grace and the supervisor's margin must fit in the one deadline"
    assert done.wait(5)
    tree.close()


def rejecting(tree: Harness, spec: ChildSpec) -> ChildSpec:
    """The spec with a reject that puts `rejected <message>` on stderr, where the recorder sees it."""
    link = tree.link
    return attrs.evolve(spec, reject=lambda msg: link.tell(Output(stream="stderr", data=f"rejected {msg}".encode())))


def fatal_in_snapshots(tree: Harness, name: str) -> bool:
    return any((info := snapshot.get(ChildId(name))) is not None and info.state is ChildState.FATAL
               for snapshot in list(tree.snapshots))


def test_a_fatal_child_is_tried_again_once_the_restart_limit_window_has_passed(tree: Harness,
                                                                               log_lines: list[str]) -> None:
    # Issue 14: six kernel kills in a minute ended query mode until the whole runner restarted.
    tree.start(tree.spec("a", intensity=IntensityLimit(max_restarts=1, period_s=1.0)))
    tree.started("a", 1)
    tree.tell_child("a", "crash")
    tree.started("a", 2)
    tree.tell_child("a", "crash")  # the second restart within the window: it gives up
    tree.started("a", 3)  # ... and is tried again when the window has passed
    info = tree.state_of("a", ChildState.RUNNING)
    assert fatal_in_snapshots(tree, "a")
    assert (info.generation, info.restarts) == (3, 2), "the same child goes on: its generations and restarts count on"
    assert any("[a]" in line and "gave up" in line and "retrying in 1s or when a request needs it" in line
               for line in log_lines)
    assert any("[a]" in line and "retrying after it gave up: the restart-limit window of 1s has passed" in line
               for line in log_lines)


def test_a_request_for_a_fatal_child_gets_its_reject_at_once_and_brings_it_back(tree: Harness,
                                                                                log_lines: list[str]) -> None:
    tree.start(rejecting(tree, tree.spec("a", intensity=IntensityLimit(max_restarts=0, period_s=60))))
    tree.started("a", 1)
    tree.tell_child("a", "crash")
    tree.state_of("a", ChildState.FATAL)  # for a minute, unless something needs it
    tree.tell_child("a", "ping")
    tree.recorder.wait_for(lambda m: m == Output(stream="stderr", data=b"rejected ping"), timeout=5,
                           what="the reject answer for a request that came while it was FATAL")
    tree.started("a", 2)
    tree.tell_child("a", "ping")
    tree.recorder.wait_for(lambda m: m == ("pong", "a", 2), timeout=5, what="the retried child answering")
    assert any("[a]" in line and "retrying after it gave up: a request needs it" in line for line in log_lines)


def test_a_child_whose_spec_says_so_stays_fatal(tree: Harness, log_lines: list[str]) -> None:
    spec = attrs.evolve(tree.spec("a", intensity=IntensityLimit(max_restarts=0, period_s=0.1)),
                        fatal_retry=NO_FATAL_RETRY)
    tree.start(rejecting(tree, spec))
    tree.started("a", 1)
    tree.tell_child("a", "crash")
    tree.state_of("a", ChildState.FATAL)
    tree.tell_child("a", "ping")
    tree.recorder.wait_for(lambda m: m == Output(stream="stderr", data=b"rejected ping"), timeout=5, what="reject")
    assert tree.children()["a"].state is ChildState.FATAL
    assert any("[a]" in line and "gave up" in line and "not retried" in line for line in log_lines)


class Quitter(SupervisedActor):
    """Ends itself on its first message; work told to it meanwhile must reach the next incarnation."""

    redeliverable = (str, tuple)

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


def test_work_sent_to_an_ending_child_goes_to_the_next_incarnation(tree: Harness) -> None:
    recorder = tree.recorder.ref
    tree.start(ChildSpec(child_id=ChildId("q"), factory=lambda ctx: Quitter.start(ctx=ctx, recorder=recorder),
                         backoff=FAST))
    tasks = [f"task {i}" for i in range(5)]
    tree.tell_child("q", "end now")
    for task in tasks:
        tree.tell_child("q", task)
    got = [tree.recorder.wait_for(lambda m, t=t: m == ("got", 2, t), timeout=5, what=f"{t} delivered") for t in tasks]
    assert [m[2] for m in got] == tasks, "handed-back work keeps its order"
