"""HealthCheckerActor under the real supervisor with a real HTTP model server; a Recorder stands in for the router."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pykka
import pytest
import requests
from loguru import logger

from kernel_runner.actors.health import actor as health
from kernel_runner.actors.health.actor import (
    LIFECYCLE,
    HealthCheckerActor,
    HealthMemo,
    Phase,
    ProbeRequest,
    probe_once,
)
from kernel_runner.config import RestartDefaults, RunnerConfig
from kernel_runner.context import RunnerContext
from kernel_runner.generations import ModelReply
from kernel_runner.ids import health_child, service_child
from kernel_runner.messages import (
    HealthCheck,
    ModelInfo,
    ModelServiceResult,
    ModelServiceSpec,
    ModelServiceStatus,
)
from kernel_runner.runtime.tree import health_plan, model_child_specs
from kernel_runner.servicedefs import ServiceLaunch
from kernel_runner.supervision.actor import InvalidTransition, PhaseMachine
from kernel_runner.supervision.clock import REAL_CLOCK
from kernel_runner.supervision.exits import Unhealthy
from kernel_runner.supervision.spec import ChildContext, ChildSpec, ChildState, RestartChild, StartChild
from kernel_runner.wire.answers import ModelStartAnswer
from kernel_runner.wire.outbox import RouterLink
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.procs import alive, assert_gone
from tests.support.tree import Tree
from tests.support.waiting import wait_until

SERVER = str(CHILDREN / "health_server.py")


class Harness(Tree):
    """A real supervisor with the recorder as its router; model children are started through it."""

    def __init__(self, config: RunnerConfig, work_dir: Path) -> None:
        super().__init__(config)
        self.config = config
        self.work_dir = work_dir

    def new_answer(self) -> ModelStartAnswer:
        """A start-model-service's answer, as the router attaches it: it goes into the recorder."""
        return ModelStartAnswer(self.link.tell)

    def launch(self, name: str, port: int, *server_args: str) -> ServiceLaunch:
        argv = (sys.executable, SERVER, str(port), *server_args)
        # Literal arguments, no templates: the catalog's part is tested in tests/unit/test_servicedefs_*.
        return ServiceLaunch(name=f"{name}-{port}", origin="intrinsic", cwd=self.work_dir, port=port, arguments=argv,
                             base_env=dict(os.environ))

    def start_model(self, name: str, port: int, check: HealthCheck, *server_args: str) -> list[ChildSpec]:
        model = ModelInfo(name=name, service=ModelServiceSpec(start_command=("unused",), port=port, health_check=check))
        specs = list(model_child_specs(model, self.launch(name, port, *server_args), self.runner,
                                       contract=ModelReply.VERDICT, answer=self.new_answer()))
        for spec in specs:
            self.supervisor.tell(StartChild(spec=spec))
        return specs

    def running_pid(self, child_id: str) -> int:
        def pid() -> int | None:
            info = self.children().get(child_id)
            return info.pid if info is not None and info.state is ChildState.RUNNING else None

        found = wait_until(pid, timeout=30, what=f"{child_id} running")
        assert found is not None
        return found

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.recorder.messages if isinstance(m, kind)]

    def wait_for(self, kind: type[Any], *, timeout: float, index: int = 0, **fields: Any) -> Any:
        def match(message: Any) -> bool:
            return isinstance(message, kind) and all(getattr(message, k) == v for k, v in fields.items())

        def nth() -> Any:
            found = [m for m in self.recorder.messages if match(m)]
            return found[index] if len(found) > index else None

        return wait_until(nth, timeout=timeout, what=f"{kind.__name__} #{index} {fields}")


@pytest.fixture
def config(runner_config: RunnerConfig) -> RunnerConfig:
    return attrs.evolve(runner_config, restart=RestartDefaults(backoff_initial_s=0.05, backoff_cap_s=0.2,
                                                               backoff_jitter=0.0))


@pytest.fixture
def harness(config: RunnerConfig, work_dir: Path) -> Iterator[Harness]:
    made = Harness(config, work_dir)
    yield made
    made.close()


def test_started_follows_readiness_without_waiting_for_max_wait_time(harness: Harness, tmp_path: Path) -> None:
    # No clock: max_wait_time is 60 s, so a checker that tried once per max_wait_time (upstream) could neither probe
    # three times nor answer within the 30 s waits below; ours probes every startup period (docs/protocol.md §7.2).
    port = free_port()
    control = tmp_path / "control"
    control.write_text("503")
    harness.start_model("fast", port, HealthCheck(path="/health", max_retries=10, max_wait_time=60.0),
                        "--control", str(control))
    checker = health_child(f"fast-{port}")
    harness.wait_child(checker, lambda c: c.extra.get("probes", 0) >= 3, timeout=30, what="three failed probes")
    assert harness.of_type(ModelServiceResult) == []  # not ready yet: no answer
    control.write_text("")  # ready from now on
    harness.wait_for(ModelServiceResult, timeout=30)
    assert harness.of_type(ModelServiceResult) == [ModelServiceResult(status="started")]
    harness.wait_for(ModelServiceStatus, timeout=30, model_name="fast", is_healthy=True)
    extra = harness.children()[health_child(f"fast-{port}")].extra
    assert extra["health"] == "healthy" and extra["last_probe"]["status_code"] == 200


def test_never_healthy_replies_once_within_the_budget_and_stops_the_server(harness: Harness) -> None:
    port = free_port()
    started = time.monotonic()
    harness.start_model("sick", port, HealthCheck(path="/health", max_retries=4, max_wait_time=0.25),
                        "--healthy-after", "999")
    pid = harness.running_pid(service_child(f"sick-{port}"))
    harness.wait_for(ModelServiceResult, timeout=1.0 + 10)
    took = time.monotonic() - started
    assert took >= 1.0, took  # the budget is 4 × 0.25 s
    assert not alive(pid)  # stopped before the answer (docs/protocol.md §7.2 step 4)
    wait_until(lambda: not harness.children().keys() - {"router", "lang"}, timeout=30, what="both children forgotten")
    assert_gone([pid], timeout=30)
    assert harness.of_type(ModelServiceResult) == [ModelServiceResult(status="failed", error="service unhealthy")]
    assert harness.of_type(ModelServiceStatus) == []  # it never was healthy: no transition to report


def test_a_server_kept_after_a_failed_start_reports_its_late_recovery(config: RunnerConfig, work_dir: Path,
                                                                     tmp_path: Path) -> None:
    harness = Harness(attrs.evolve(config, model_stop_on_startup_failure=False), work_dir)
    try:
        port = free_port()
        control = tmp_path / "control"
        control.write_text("500")
        harness.start_model("late", port, HealthCheck(path="/health", max_retries=2, max_wait_time=0.2, interval=0.05),
                            "--control", str(control))
        harness.wait_for(ModelServiceResult, timeout=30, status="failed", error="service unhealthy")
        pid = harness.running_pid(service_child(f"late-{port}"))
        checker = harness.children()[health_child(f"late-{port}")]
        assert checker.state is ChildState.RUNNING and checker.extra["health"] == "unhealthy"
        control.write_text("")
        harness.wait_for(ModelServiceStatus, timeout=30, model_name="late", is_healthy=True)
        assert alive(pid)
    finally:
        harness.close()


def test_a_hanging_server_is_bounded_by_max_wait_time(harness: Harness, tmp_path: Path, log_lines: list[str]) -> None:
    port = free_port()
    control = tmp_path / "control"
    control.write_text("hang")
    # initial_delay only lengthens the startup budget (to 5.2 s): time for a busy machine to start the server, so
    # the last probe meets the hanging handler rather than a closed port.
    harness.start_model("hung", port, HealthCheck(path="/health", max_retries=4, max_wait_time=0.3, initial_delay=4.0),
                        "--control", str(control))
    harness.wait_for(ModelServiceResult, timeout=60, status="failed")
    # The last probe ended at its own read timeout, not at the server's 30 s hang nor by the overdue backstop.
    assert any("not healthy within" in line and "no answer within 0.3s" in line for line in log_lines)
    assert not any("gave no result within its timeouts" in line for line in log_lines)


class CrashingChecker(HealthCheckerActor):
    """A checker with a bug the test can trigger: "crash" raises in its handler."""

    def handle(self, message: object) -> object:
        if message == "crash":
            raise RuntimeError("checker bug")
        return super().handle(message)


def start_with_crashing_checker(harness: Harness, name: str, port: int, check: HealthCheck,
                                *server_args: str) -> HealthMemo:
    """A model service whose checker can be crashed; returns the memo its incarnations share."""
    answer = harness.new_answer()
    server, checker = model_child_specs(
        ModelInfo(name=name, service=ModelServiceSpec(start_command=("x",), port=port, health_check=check)),
        harness.launch(name, port, *server_args), harness.runner, contract=ModelReply.VERDICT, answer=answer,
    )
    plan = health_plan(name, f"{name}-{port}", port, check, harness.runner, answer=answer)
    memo = HealthMemo()

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return CrashingChecker.start(ctx=ctx, runner=harness.runner, plan=plan, memo=memo)

    harness.start(server)
    harness.start(attrs.evolve(checker, factory=factory))
    harness.wait_for(ModelServiceResult, timeout=60, status="started")
    return memo


def test_a_crashed_checker_is_restarted_and_never_replies_twice(harness: Harness, tmp_path: Path) -> None:
    port = free_port()
    control = tmp_path / "control"
    control.write_text("")
    check = HealthCheck(path="/health", max_retries=2, max_wait_time=1.5, interval=0.05, initial_delay=30.0)
    start_with_crashing_checker(harness, "crash", port, check, "--control", str(control))
    harness.tell_child(health_child(f"crash-{port}"), "crash")
    wait_until(lambda: (c := harness.children().get(health_child(f"crash-{port}"))) is not None
               and c.generation == 2 and c.state is ChildState.RUNNING, timeout=30, what="checker generation 2")
    control.write_text("500")  # the new incarnation goes on with liveness
    harness.wait_for(ModelServiceStatus, timeout=30, is_healthy=False)
    assert len(harness.of_type(ModelServiceResult)) == 1
    assert [m.is_healthy for m in harness.of_type(ModelServiceStatus)][:2] == [True, False]


def test_restart_child_unhealthy_makes_the_supervisor_restart_the_server(harness: Harness) -> None:
    port = free_port()
    harness.start_model("again", port, HealthCheck(path="/health", max_retries=3, max_wait_time=1.0, interval=5.0,
                                                   initial_delay=30.0))
    harness.wait_for(ModelServiceResult, timeout=60, status="started")
    server_id = service_child(f"again-{port}")
    pid = harness.running_pid(server_id)
    harness.supervisor.tell(RestartChild(child_id=server_id, reason=Unhealthy(detail="told by the test")))
    wait_until(lambda: (c := harness.children().get(server_id)) is not None and c.restarts == 1
               and c.state is ChildState.RUNNING and c.pid not in (None, pid), timeout=30, what="server restarted")
    assert harness.children()[server_id].last_exit == "unhealthy: told by the test"
    assert_gone([pid], timeout=30)


# ---- the probe itself (Prober's one call), against real sockets -------------------------------------------


def request(port: int, *, read_timeout: float = 0.5, expected: int = 200) -> ProbeRequest:
    return ProbeRequest(seq=1, url=f"http://127.0.0.1:{port}/health", connect_timeout_s=0.5,
                        read_timeout_s=read_timeout, expected_status=expected)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    import subprocess

    port = free_port()
    control = tmp_path / "control"
    control.write_text("")
    proc = subprocess.Popen([sys.executable, SERVER, str(port), "--control", str(control)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    while b"listening" not in proc.stdout.readline():
        pass
    yield port, control
    proc.kill()
    proc.wait(5)
    proc.stdout.close()


def test_probe_outcomes(server: tuple[int, Path]) -> None:
    port, control = server
    with requests.Session() as session:
        session.trust_env = False
        assert probe_once(session, request(port), REAL_CLOCK).ok
        wrong = probe_once(session, request(port, expected=204), REAL_CLOCK)
        assert not wrong.ok and wrong.status_code == 200 and wrong.error == "status 200, expected 204"
        control.write_text("close")
        closed = probe_once(session, request(port), REAL_CLOCK)
        assert not closed.ok and closed.status_code is None and closed.error == "connection closed without a response"
        control.write_text("hang")
        hung = probe_once(session, request(port, read_timeout=0.2), REAL_CLOCK)
        # Bounded by the 0.2 s read timeout, not by the server's 30 s hang (the bound only excludes the latter).
        assert hung.error == "no answer within 0.2s" and 0.2 <= hung.latency_s < 25
        refused = probe_once(session, request(free_port()), REAL_CLOCK)
        assert refused.error == "connection refused" and refused.status_code is None


def test_budget_and_reply_deadline_numbers(config: RunnerConfig) -> None:
    runner = RunnerContext(config=config, router=RouterLink(1))
    plain = health_plan("m", "m-1", 1, HealthCheck(path="health", max_retries=10, max_wait_time=5.0), runner)
    assert plain.url == "http://127.0.0.1:1/health"
    assert plain.startup_budget_s == 50.0 and plain.reply_within_s == 50.0  # the agent waits 60 s (docs/protocol.md §3.5)
    assert plain.read_timeout_s == 5.0 and plain.connect_timeout_s == 1.0 and plain.interval_s == 10.0
    slow = health_plan("m", "m-1", 1, HealthCheck(path="/h", max_retries=2, max_wait_time=1.0, initial_delay=60.0,
                                                  interval=3.0), runner)
    assert slow.startup_budget_s == 62.0  # initial_delay is startup grace
    assert slow.reply_within_s == 2.0 + 10.0 - health.REPLY_MARGIN_S  # but the reply beats the agent's 12 s
    assert slow.interval_s == 3.0


def test_a_long_startup_grace_answers_before_the_agent_gives_up_and_reports_recovery_later(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, log_lines: list[str]
) -> None:
    # The agent's slack (10 s) is shrunk so the test is quick; the logic is the same.
    monkeypatch.setattr(health, "AGENT_REPLY_SLACK_S", 0.3)
    monkeypatch.setattr(health, "REPLY_MARGIN_S", 0.0)
    port = free_port()
    control = tmp_path / "control"
    control.write_text("503")
    # The agent gives up after 2 × 0.1 + 0.3 = 0.5 s; the grace is 300 s. Answering only at the grace's end could not
    # happen within the 60 s wait; the server turns healthy only after the answer, so recovery is reported later.
    harness.start_model("big", port, HealthCheck(path="/health", max_retries=2, max_wait_time=0.1, initial_delay=300.0),
                        "--control", str(control))
    harness.wait_for(ModelServiceResult, timeout=60)
    assert harness.of_type(ModelServiceResult) == [ModelServiceResult(status="failed", error="service unhealthy")]
    assert any("answered `failed` before the agent gives up" in line for line in log_lines)
    control.write_text("")
    harness.wait_for(ModelServiceStatus, timeout=30, model_name="big", is_healthy=True)
    assert harness.children()[service_child(f"big-{port}")].state is ChildState.RUNNING
    assert len(harness.of_type(ModelServiceResult)) == 1



def test_a_probe_that_never_ends_counts_as_failed(harness: Harness, tmp_path: Path) -> None:
    # Bytes every 0.1 s keep each socket read under its 0.3 s timeout, so requests alone would wait 20 s.
    port = free_port()
    control = tmp_path / "control"
    control.write_text("")
    # initial_delay only lengthens the startup budget, so a busy machine has time to start the server.
    harness.start_model("drip", port, HealthCheck(path="/health", max_retries=2, max_wait_time=0.3, interval=0.1,
                                                  initial_delay=30.0), "--control", str(control))
    harness.wait_for(ModelServiceResult, timeout=60, status="started")
    control.write_text("trickle")
    harness.wait_for(ModelServiceStatus, timeout=60, model_name="drip", is_healthy=False)
    # The verdict came from the overdue backstop (its error text), not from requests ending after the 20 s trickle.
    extra = harness.children()[health_child(f"drip-{port}")].extra
    assert extra["last_probe"]["error"] in ("the probe hung past its timeouts", "the previous probe is still hanging")


# ---- the checker's phase, carried across incarnations by the memo ---------------------------------------


def phase_edges(log_lines: list[str], child_id: str) -> list[str]:
    """The phase changes a child's actors logged, in order: ["STARTUP -> LIVENESS", ...]."""
    tag = f"[{child_id}] phase "
    return [line.split(tag, 1)[1].split(":", 1)[0] for line in log_lines if tag in line]


def test_a_healthy_model_goes_from_startup_to_liveness(harness: Harness, log_lines: list[str]) -> None:
    port = free_port()
    harness.start_model("up", port, HealthCheck(path="/health", max_retries=10, max_wait_time=1.0, interval=5.0,
                                                initial_delay=30.0), "--healthy-after", "0.1")
    harness.wait_for(ModelServiceResult, timeout=60, status="started")
    checker = health_child(f"up-{port}")
    assert phase_edges(log_lines, checker) == ["STARTUP -> LIVENESS"]
    assert harness.children()[checker].extra["phase"] == "liveness"
    # The server has no port of its own to wait for (the checker's probe decides): up as soon as it is spawned.
    assert phase_edges(log_lines, service_child(f"up-{port}")) == ["PREPARING -> STARTING", "STARTING -> RUNNING"]


def test_a_server_that_exits_during_startup_ends_the_checker_done(harness: Harness, log_lines: list[str]) -> None:
    port = free_port()
    harness.start_model("dies", port, HealthCheck(path="/health", max_retries=10, max_wait_time=1.0),
                        "--healthy-after", "999", "--exit-after", "0.2", "--code", "4")
    result = harness.wait_for(ModelServiceResult, timeout=30)
    assert result.status == "failed" and result.error.startswith("the model service exited during startup (code 4)")
    wait_until(lambda: not harness.children().keys() - {"router", "lang"}, timeout=30, what="both children forgotten")
    assert phase_edges(log_lines, health_child(f"dies-{port}")) == ["STARTUP -> STOPPING_SERVER", "STOPPING_SERVER -> DONE"]
    # The server told its watcher (ServiceProcessEnded) once its exit was drained.
    assert phase_edges(log_lines, service_child(f"dies-{port}"))[:4] == [
        "PREPARING -> STARTING", "STARTING -> RUNNING", "RUNNING -> EXITING", "EXITING -> ENDED",
    ]
    assert len(harness.of_type(ModelServiceResult)) == 1


def test_a_restarted_checker_goes_on_in_the_phase_its_memo_carries(harness: Harness, log_lines: list[str]) -> None:
    port = free_port()
    check = HealthCheck(path="/health", max_retries=2, max_wait_time=1.0, interval=0.05, initial_delay=30.0)
    memo = start_with_crashing_checker(harness, "memo", port, check)
    assert memo.phase is Phase.LIVENESS
    checker_id = health_child(f"memo-{port}")
    harness.tell_child(checker_id, "crash")
    # The incarnation reports RUNNING, then logs its start and publishes its figures: wait for all of it, bounded.
    info = harness.wait_child(checker_id, lambda c: c.generation == 2 and c.state is ChildState.RUNNING
                              and "phase" in c.extra, what="checker generation 2 with its figures", timeout=30)
    wait_until(lambda: any(f"[{checker_id}] restarted; probing" in line for line in log_lines), timeout=30,
               what="the second incarnation's start line")
    # The second incarnation started in LIVENESS: no second startup, no second STARTUP -> LIVENESS.
    assert phase_edges(log_lines, checker_id) == ["STARTUP -> LIVENESS"]
    assert info.extra["phase"] == "liveness" and memo.phase is Phase.LIVENESS


def test_a_checker_whose_memo_is_done_ends_at_once(harness: Harness, log_lines: list[str]) -> None:
    port = free_port()
    check = HealthCheck(path="/health", max_retries=2, max_wait_time=1.0)
    answer = harness.new_answer()
    _server, checker = model_child_specs(
        ModelInfo(name="over", service=ModelServiceSpec(start_command=("x",), port=port, health_check=check)),
        harness.launch("over", port), harness.runner, contract=ModelReply.VERDICT, answer=answer,
    )
    plan = health_plan("over", f"over-{port}", port, check, harness.runner, answer=answer)
    memo = HealthMemo(started_at=0.0, replied=True, phase=Phase.DONE, health="unhealthy")

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return HealthCheckerActor.start(ctx=ctx, runner=harness.runner, plan=plan, memo=memo)

    checker_id = health_child(f"over-{port}")
    harness.start(attrs.evolve(checker, factory=factory, binds_to=None))
    wait_until(lambda: checker_id not in harness.children(), timeout=5, what="a done checker forgotten")
    assert not any(f"[{checker_id}] probing" in line for line in log_lines)
    assert phase_edges(log_lines, checker_id) == []
    assert harness.of_type(ModelServiceResult) == [] and harness.of_type(ModelServiceStatus) == []
    assert memo.phase is Phase.DONE


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Phase.LIVENESS, Phase.STARTUP),  # a restarted server is probed in liveness (with its grace), never re-started
        (Phase.LIVENESS, Phase.DONE),  # liveness restarts the server; it never ends the model service
        (Phase.DONE, Phase.LIVENESS),
        (Phase.DONE, Phase.STARTUP),
        (Phase.STARTUP, Phase.STARTUP),
    ],
)
def test_the_transition_table_rejects_edges_that_must_never_happen(old: Phase, new: Phase) -> None:
    machine = PhaseMachine(old, LIFECYCLE.transitions, log=lambda: logger)
    with pytest.raises(InvalidTransition):
        machine.to(new)
    assert machine.phase is old
