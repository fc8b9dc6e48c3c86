"""The language runner hands `code` of Jupyter languages to the kernel child and git's to the terminal child.

The real kernel and terminal actors have their own tests; here a tiny fake delegate (a SupervisedActor
registered as the extra child "kernel" or "terminal") stands in for them, so these tests check only the
runner's side of the contract: forward the run, keep the queue waiting until RunDone, route input, interrupt
and completion to the delegate while its run is current. The last tests check the runner's phases (one `Phase`,
changed through a PhaseMachine that logs "phase A -> B") and its transition table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from loguru import logger

from kernel_runner import RunnerConfig
from kernel_runner.actors.lang_runner.actor import LIFECYCLE, Phase
from kernel_runner.client import AgentClient
from kernel_runner.context import RunnerContext
from kernel_runner.ids import KERNEL_CHILD, LANG_CHILD, TERMINAL_CHILD, ChildId
from kernel_runner.messages import CompleteCode, FeedInput, InterruptRun, Output, RunDone, RunTask
from kernel_runner.runtime import tree
from kernel_runner.runtime.root import ChildPlan
from kernel_runner.runtime.tree import Tier
from kernel_runner.supervision.actor import InvalidTransition, PhaseMachine, SupervisedActor
from kernel_runner.supervision.spec import ChildContext, ChildSpec, ChildState, StopRequested
from kernel_runner.wire.answers import delegate_reject
from tests.support.runners import LangRunners, read_until
from tests.support.waiting import wait_until


class FakeDelegate(SupervisedActor):
    """Answers RunTask like a kernel: output, then RunDone. Text "hold" waits for input or an interrupt."""

    def __init__(self, *, ctx: ChildContext, runner: RunnerContext, seen: list[object], lock: threading.Lock) -> None:
        super().__init__(ctx=ctx)
        self.router = runner.router
        self.seen = seen
        self.lock = lock
        self.held: RunTask | None = None

    def start_child(self) -> None:
        self.set_state(ChildState.RUNNING)

    def handle(self, message: object) -> object:
        with self.lock:
            self.seen.append(message)
        match message:
            case RunTask():
                if message.text == "hold":
                    self.held = message
                else:
                    self._finish(message, f"{self.child_id} ran {message.text}", 0)
            case FeedInput():
                if self.held is not None:
                    self._finish(self.held, f"got {message.text}", 0)
            case InterruptRun():
                if self.held is not None:
                    self._finish(self.held, "interrupted", 130)
            case CompleteCode():
                message.answer.send((f"{message.code}-completed",))
        return None

    def _finish(self, task: RunTask, text: str, code: int) -> None:
        self.held = None
        self.router.tell(Output(stream="stdout", data=text.encode()))
        note = "a note\n" if task.text == "with note" else None
        self.tell_child(LANG_CHILD, RunDone(run_id=task.run_id, exit_code=code, note=note))


class Delegates:
    def __init__(self) -> None:
        self.seen: list[object] = []
        self.lock = threading.Lock()

    def spec(self, child_id: ChildId) -> ChildPlan:
        def plan(runner: RunnerContext) -> ChildSpec:
            def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
                return FakeDelegate.start(ctx=ctx, runner=runner, seen=self.seen, lock=self.lock)

            reject = delegate_reject(runner.directory, what=f"the fake {child_id}")
            return ChildSpec(child_id=child_id, factory=factory, tier=Tier.PROCESSES_TOGETHER, reject=reject)

        return plan

    def of_type(self, kind: type) -> list[Any]:
        with self.lock:
            return [m for m in self.seen if isinstance(m, kind)]


@pytest.fixture
def delegates() -> Delegates:
    return Delegates()


@pytest.fixture
def langs(runner_config: RunnerConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[LangRunners]:
    # The runtime registers the real delegate for the language; these tests put the fake in its place.
    monkeypatch.setattr(tree, "delegate_children", lambda runner: [])
    runners = LangRunners(runner_config)
    yield runners
    runners.close()


def start_with_kernel(langs: LangRunners, delegates: Delegates, lang: str = "python") -> AgentClient:
    return langs.start(lang, extra_children=[delegates.spec(KERNEL_CHILD)])


def test_python_code_goes_to_the_kernel_child(langs: LangRunners, delegates: Delegates) -> None:
    agent = start_with_kernel(langs, delegates)
    result = agent.code("1 + 1")
    assert (result.status, result.exit_code, result.stdout) == ("finished", 0, b"kernel ran 1 + 1")
    noted = agent.code("with note")
    assert (noted.exit_code, noted.stdout, noted.stderr) == (0, b"kernel ran with note", b"a note\n")
    first, _ = delegates.of_type(RunTask)
    assert (first.kind, first.text) == ("code", "1 + 1")
    # The queue moved on after RunDone: a batch op runs in the language runner itself.
    assert agent.run("exec", "echo after").stdout == b"after\n"


def test_the_queue_waits_for_the_delegated_run(langs: LangRunners, delegates: Delegates) -> None:
    agent = start_with_kernel(langs, delegates)
    agent.send("code", "hold")
    agent.send("exec", "echo queued")
    wait_until(lambda: delegates.of_type(RunTask), timeout=5, what="the kernel to get the run")
    # While the kernel holds its run, the exec waits: input goes to the kernel (nothing else waits for input).
    agent.feed_input("typed")
    held = agent.collect_run()
    assert (held.exit_code, held.stdout) == (0, b"got typed")
    queued = agent.collect_run()
    assert (queued.exit_code, queued.stdout) == (0, b"queued\n")
    assert [m.text for m in delegates.of_type(FeedInput)] == ["typed"]


def test_interrupt_goes_to_the_kernel_while_its_run_is_current(langs: LangRunners, delegates: Delegates) -> None:
    agent = start_with_kernel(langs, delegates)
    agent.interrupt()  # nothing current: not forwarded (the runner logs it)
    agent.send("code", "hold")
    wait_until(lambda: delegates.of_type(RunTask), timeout=5, what="the kernel to get the run")
    agent.interrupt()
    result = agent.collect_run()
    assert (result.exit_code, result.stdout) == (130, b"interrupted")
    assert len(delegates.of_type(InterruptRun)) == 1


def test_completion_always_goes_to_the_kernel_for_jupyter_languages(langs: LangRunners, delegates: Delegates) -> None:
    agent = start_with_kernel(langs, delegates)
    assert agent.complete("pri") == {"suggestions": ["pri-completed"]}
    c_agent = langs.start("c")
    assert c_agent.complete("pri") == {"suggestions": []}  # docs/protocol.md §10.1 #1: other languages answer an empty list


def test_git_code_goes_to_the_terminal_child_and_batch_star_is_refused(langs: LangRunners, delegates: Delegates) -> None:
    agent = langs.start("git", extra_children=[delegates.spec(TERMINAL_CHILD)])
    result = agent.code("%ping")
    assert (result.exit_code, result.stdout) == (0, b"terminal ran %ping")
    build = agent.run("build", "*")
    assert build.status == "build-finished" and build.exit_code != 0
    assert b"not supported" in build.stderr
    assert agent.complete("x") == {"suggestions": []}


def test_app_has_no_query_mode(langs: LangRunners) -> None:
    agent = langs.start("app")
    result = agent.code("print(1)")
    assert (result.status, result.exit_code) == ("finished", 127)
    assert b"query mode is not available" in result.stderr


# ---- phases ----------------------------------------------------------------------------------------------------


def lang_phases(log_lines: list[str]) -> list[str]:
    """The language runner's phase changes, as "OLD -> NEW", in order (PhaseMachine logs each one at DEBUG)."""
    prefix = "DEBUG [lang] phase "
    return [line.removeprefix(prefix).split(":", 1)[0] for line in log_lines if line.startswith(prefix)]


def test_a_normal_life_goes_through_its_phases(langs: LangRunners, delegates: Delegates, log_lines: list[str]) -> None:
    agent = start_with_kernel(langs, delegates)
    assert agent.code("1 + 1").exit_code == 0
    assert agent.run("exec", "echo batch").stdout == b"batch\n"
    assert agent.run("exec", "").exit_code == 0  # nothing to run: it ends at once, and the phase stays IDLE
    assert langs.handles[0].stop(timeout=5)
    assert lang_phases(log_lines) == [
        "STARTING -> IDLE",
        "IDLE -> DELEGATED",
        "DELEGATED -> IDLE",
        "IDLE -> RUNNING_JOB",
        "RUNNING_JOB -> IDLE",
        "IDLE -> ENDED",
    ]


def test_a_stop_while_the_kernel_has_the_run_answers_it_once(
    langs: LangRunners, delegates: Delegates, log_lines: list[str]
) -> None:
    agent = start_with_kernel(langs, delegates)
    agent.send("code", "hold")
    wait_until(lambda: delegates.of_type(RunTask), timeout=5, what="the kernel to get the run")
    assert langs.handles[0].stop(timeout=5)
    result = agent.collect_run(timeout=5)
    assert (result.status, result.exit_code) == ("finished", 127)
    assert b"language runner is not available" in result.stderr
    assert lang_phases(log_lines)[-1] == "DELEGATED -> ENDED"


def test_a_second_stop_request_while_stopping_is_ignored(langs: LangRunners, log_lines: list[str]) -> None:
    agent = langs.start("c")
    handle = langs.handles[0]
    agent.send("exec", "trap '' TERM; echo ready; while :; do sleep 0.05; done")
    read_until(agent, b"ready")
    handle.tell_child(LANG_CHILD, StopRequested(reason="first", grace_s=0.5))
    handle.tell_child(LANG_CHILD, StopRequested(reason="second", grace_s=0.5))
    result = agent.collect_run(timeout=10)
    # The run's own end (SIGTERM ignored, SIGKILL after the first grace), not a crash's 127 from cleanup.
    assert (result.status, result.exit_code) == ("finished", 128 + 9)
    assert any("stop requested again (second)" in line for line in log_lines)
    # The run's Finished goes out just before the phase changes: wait for the line, not for the agent.
    wait_until(lambda: "STOPPING -> ENDED" in lang_phases(log_lines), timeout=5, what="the runner to end")
    assert lang_phases(log_lines)[-3:] == ["IDLE -> RUNNING_JOB", "RUNNING_JOB -> STOPPING", "STOPPING -> ENDED"]
    # It ended with ShutdownExit, which the supervisor does not restart; a later run is still answered (its reject).
    later = agent.run("exec", "echo later", timeout=10)
    assert (later.exit_code, later.stdout) == (127, b"")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Phase.STARTING, Phase.RUNNING_JOB),  # no run starts before the start-up steps are done
        (Phase.STARTING, Phase.DELEGATED),
        (Phase.DELEGATED, Phase.RUNNING_JOB),  # one op at a time: nothing starts while the kernel has a run
        (Phase.RUNNING_JOB, Phase.DELEGATED),
        (Phase.RUNNING_JOB, Phase.RUNNING_JOB),
        (Phase.DELEGATED, Phase.STOPPING),  # no step of ours to stop: a delegated run ends with the actor
        (Phase.IDLE, Phase.STOPPING),  # nothing to wait for: an idle runner ends at once
        (Phase.STOPPING, Phase.IDLE),  # a stopping runner takes no more work
        (Phase.STOPPING, Phase.STOPPING),
        (Phase.ENDED, Phase.IDLE),
        (Phase.ENDED, Phase.STARTING),
    ],
)
def test_the_transition_table_refuses_edges_that_must_never_happen(old: Phase, new: Phase) -> None:
    life = PhaseMachine(old, LIFECYCLE.transitions, log=lambda: logger)
    with pytest.raises(InvalidTransition):
        life.to(new, "test")
    assert life.phase is old


def test_every_phase_can_end_and_the_supervisor_sees_running_until_stopping() -> None:
    assert set(LIFECYCLE.transitions) == set(Phase) == set(LIFECYCLE.child_states)
    # cleanup moves any phase to ENDED (a crash, or a stop from outside), so that edge must exist everywhere.
    assert all(Phase.ENDED in LIFECYCLE.transitions[phase] for phase in Phase if phase is not Phase.ENDED)
    assert LIFECYCLE.transitions[Phase.ENDED] == frozenset()
    running = {phase for phase, state in LIFECYCLE.child_states.items() if state is ChildState.RUNNING}
    assert running == {Phase.STARTING, Phase.IDLE, Phase.RUNNING_JOB, Phase.DELEGATED}
    assert LIFECYCLE.child_states[Phase.STOPPING] is ChildState.STOPPING
    life = PhaseMachine(Phase.STARTING, LIFECYCLE.transitions, log=lambda: logger)
    for phase in (Phase.IDLE, Phase.DELEGATED, Phase.IDLE, Phase.RUNNING_JOB, Phase.STOPPING, Phase.ENDED):
        life.to(phase, "a whole life")
    assert life.phase is Phase.ENDED
