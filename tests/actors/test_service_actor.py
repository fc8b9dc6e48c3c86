"""ServiceActor under the real supervisor: real processes, real ports, real signals."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from loguru import logger

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.actors.service.actor import LIFECYCLE, Phase, ServiceActor, ServiceRun
from kernel_runner.client import AgentClient
from kernel_runner.context import RunnerContext
from kernel_runner.ids import ChildId, service_child
from kernel_runner.messages import StartModelService, StartService
from kernel_runner.servicedefs import Refusal, ServiceCommand
from kernel_runner.supervision.actor import InvalidTransition, PhaseMachine
from kernel_runner.supervision.policy import Backoff, IntensityLimit
from kernel_runner.supervision.spec import ChildContext, ChildSpec, ChildState
from tests.conftest import CHILDREN
from tests.support.ports import free_port, free_ports
from tests.support.procs import alive, assert_gone
from tests.support.waiting import wait_until


class TablePlanner:
    """A planner over fixed ServiceRuns, standing in for service definitions (those are tested on their own)."""

    def __init__(self, runner: RunnerContext, runs: dict[str, ServiceRun], *, backoff: Backoff,
                 intensity: IntensityLimit) -> None:
        self.runner = runner
        self.runs = runs
        self.backoff = backoff
        self.intensity = intensity

    def apps(self, name: str | None) -> Sequence[Mapping[str, Any]]:
        return [{"name": n} for n in self.runs]

    def plan_service(self, request: StartService) -> Sequence[ChildSpec] | Refusal:
        run = self.runs.get(request.info.name)
        if run is None:
            return Refusal("unsupported service")

        def factory(ctx: ChildContext) -> Any:
            return ServiceActor.start(ctx=ctx, runner=self.runner, run=run, answer=request.answer)

        return [ChildSpec(child_id=service_child(run.name), factory=factory, restart="transient", shutdown_s=1.0,
                          backoff=self.backoff, intensity=self.intensity, stable_after_s=30.0,
                          retry_failed_start=False, tier=2)]

    def plan_model_service(self, request: StartModelService) -> Sequence[ChildSpec] | Refusal:
        return Refusal("not in this test")

    def service_child_ids(self, name: str) -> Sequence[ChildId]:
        return (service_child(name),)

    def intrinsic_specs(self) -> Sequence[ChildSpec]:
        return ()


def listener(name: str, port: int, *extra: str, cwd: Path, timeout: float = 5.0) -> ServiceRun:
    return ServiceRun.fixed(name=name, argv=(sys.executable, str(CHILDREN / "listener.py"), str(port), *extra),
                            env={"PATH": "/usr/bin:/bin"}, cwd=cwd, port=port, reply_within_s=timeout, start_limit_s=timeout)


class Services:
    def __init__(self, config: RunnerConfig, runs: dict[str, ServiceRun], **planner: Any) -> None:
        planner.setdefault("backoff", Backoff(initial_s=0.05, cap_s=0.2, jitter=0.0))
        planner.setdefault("intensity", IntensityLimit(max_restarts=3, period_s=60))
        self.handle: RunnerHandle = start(config, services=lambda runner: TablePlanner(runner, runs, **planner))
        self.agent = AgentClient(port_in=self.handle.ports.port_in, port_out=self.handle.ports.port_out)

    def start(self, name: str, port: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        result: dict[str, Any] = self.agent.start_service({"name": name, "port": port, "protocol": "tcp"}, timeout)
        return result

    def child(self, name: str) -> Any:
        return next((c for c in self.handle.which_children() if c.child_id == f"service:{name}"), None)

    def stopped(self, name: str) -> bool:
        """Stopped for good: its row stays, STOPPED (docs/operations.md §1.3)."""
        return (child := self.child(name)) is not None and child.state is ChildState.STOPPED

    def close(self) -> None:
        self.agent.close()
        self.handle.stop(timeout=5)


@pytest.fixture
def make_services(runner_config: RunnerConfig) -> Iterator[Any]:
    made: list[Services] = []

    def make(runs: dict[str, ServiceRun], **planner: Any) -> Services:
        services = Services(runner_config, runs, **planner)
        made.append(services)
        return services

    yield make
    for services in made:
        services.close()


def test_start_running_and_shutdown(make_services: Any, work_dir: Path, log_lines: list[str]) -> None:
    port = free_port()
    services = make_services({"web": listener("web", port, cwd=work_dir)})
    assert services.start("web") == {"status": "started"}
    info = services.child("web")
    assert info.state is ChildState.RUNNING and info.pid is not None
    assert services.start("web") == {"status": "running"}
    pid = info.pid
    services.agent.shutdown_service("web")
    wait_until(lambda: services.stopped("web"), timeout=5, what="web stopped")
    assert_gone([pid], timeout=2)
    assert any("port-open" in line and "[service:web]" in line for line in log_lines)
    # Stopped for good: a new start spawns it again.
    assert services.start("web") == {"status": "started"}


def test_process_exiting_before_its_port_opens_fails_at_once_with_its_output(make_services: Any, work_dir: Path) -> None:
    run = ServiceRun.fixed(name="bad", argv=(sys.executable, str(CHILDREN / "fail_fast.py"), "3"), env={}, cwd=work_dir,
                           port=free_port(), reply_within_s=120.0)
    services = make_services({"bad": run})
    # A 120 s launch timeout against a 60 s wait: only the exit can end this start, and the error names it.
    result = services.start("bad", timeout=60)
    assert result["status"] == "failed"
    assert "code 3" in result["error"] and "config file /nope is missing" in result["error"]
    wait_until(lambda: services.child("bad") is None, timeout=30, what="failed first start forgotten")


@pytest.mark.parametrize(
    ("argv0", "cwd_missing", "expected"),
    [
        ("/nonexistent/server", False, "the executable file is not found: /nonexistent/server"),
        ("/etc/hostname", False, "the target file is not executable: /etc/hostname"),
        (sys.executable, True, f"the executable file is not found: {sys.executable}"),
    ],
)
def test_spawn_failures_use_upstream_texts(make_services: Any, work_dir: Path, argv0: str, cwd_missing: bool,
                                           expected: str) -> None:
    cwd = work_dir / "missing" if cwd_missing else work_dir
    run = ServiceRun.fixed(name="x", argv=(argv0,), env={}, cwd=cwd, port=free_port())
    services = make_services({"x": run})
    assert services.start("x") == {"status": "failed", "error": expected}


def test_port_that_never_opens_times_out_and_the_process_is_killed(make_services: Any, work_dir: Path) -> None:
    port = free_port()
    run = listener("slow", port, "--delay", "30", cwd=work_dir, timeout=0.5)
    services = make_services({"slow": run})
    assert services.start("slow") == {"status": "failed", "error": "opening the service port timed out: slow"}
    wait_until(lambda: services.child("slow") is None, timeout=5, what="slow forgotten")


def test_unknown_service_is_unsupported(make_services: Any) -> None:
    services = make_services({})
    assert services.start("nope") == {"status": "failed", "error": "unsupported service"}


def test_crashing_service_is_restarted_and_reachable_again(make_services: Any, work_dir: Path,
                                                           log_lines: list[str]) -> None:
    port = free_port()
    services = make_services({"web": listener("web", port, "--exit-after", "0.3", cwd=work_dir)},
                             intensity=IntensityLimit(max_restarts=100, period_s=60))
    assert services.start("web") == {"status": "started"}
    first_pid = services.child("web").pid
    restarted = wait_until(
        lambda: (c := services.child("web")) is not None and c.restarts >= 1 and c.state is ChildState.RUNNING and c,
        timeout=10, what="a restarted, running web")
    assert restarted.pid != first_pid
    assert any("restarting in" in line and "[service:web]" in line for line in log_lines)
    assert not [r for r in services.agent._stash if r.type == "service-result"], "restarts must not send replies"


def test_flapping_service_ends_fatal(make_services: Any, work_dir: Path, log_lines: list[str]) -> None:
    port = free_port()
    services = make_services({"flap": listener("flap", port, "--exit-after", "0.05", cwd=work_dir)},
                             intensity=IntensityLimit(max_restarts=2, period_s=60))
    assert services.start("flap") == {"status": "started"}
    wait_until(lambda: (c := services.child("flap")) is not None and c.state is ChildState.FATAL, timeout=15,
               what="flap FATAL")
    assert any("gave up" in line and "[service:flap]" in line for line in log_lines)
    status = services.agent.status()
    flap = next(c for c in status["kernel_runner"]["children"] if c["id"] == "service:flap")
    assert flap["state"] == "FATAL" and "exited with code 1" in flap["last_exit"]
    # A FATAL service can be started again by the agent.
    assert services.start("flap")["status"] == "started"


def test_service_ignoring_sigterm_is_killed_with_its_grandchildren(make_services: Any, work_dir: Path) -> None:
    port = free_port()
    services = make_services({"stubborn": listener("stubborn", port, "--ignore-term", "--grandchild", cwd=work_dir)})
    assert services.start("stubborn") == {"status": "started"}
    pid = services.child("stubborn").pid
    import psutil

    family = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    assert len(family) == 2
    services.agent.shutdown_service("stubborn")
    wait_until(lambda: services.stopped("stubborn"), timeout=10, what="stubborn stopped")
    assert_gone(family, timeout=3)


def test_fifty_services_start_concurrently(make_services: Any, work_dir: Path) -> None:
    ports = free_ports(50)
    runs = {f"s{i}": listener(f"s{i}", port, cwd=work_dir, timeout=20) for i, port in enumerate(ports)}
    services = make_services(runs)
    import json

    for name in runs:
        services.agent.send("start-service", json.dumps({"name": name, "port": 0, "protocol": "tcp"}))
    results = [services.agent.expect("service-result", timeout=30).json() for _ in runs]
    assert results == [{"status": "started"}] * 50
    pids = [c.pid for c in services.handle.which_children() if c.child_id.startswith("service:")]
    assert len(pids) == 50 and all(alive(pid) for pid in pids)


def test_noop_service_is_started_without_a_process(make_services: Any, work_dir: Path) -> None:
    services = make_services({"noop": ServiceRun.fixed(name="noop", argv=(), env={}, cwd=work_dir, port=None)})
    assert services.start("noop") == {"status": "started"}
    assert services.child("noop").pid is None


def test_runner_stop_terminates_running_services(runner_config: RunnerConfig, work_dir: Path) -> None:
    port = free_port()
    services = Services(runner_config, {"web": listener("web", port, "--grandchild", cwd=work_dir)})
    assert services.start("web") == {"status": "started"}
    import psutil

    pid = services.child("web").pid
    family = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    services.close()
    assert_gone(family, timeout=3)


def test_prestart_failure_is_the_reply(make_services: Any, work_dir: Path) -> None:
    from kernel_runner.servicedefs import ServiceStartError

    def prepare() -> ServiceCommand:
        raise ServiceStartError("InvalidServiceDefinition('Service-def for x used invalid action: nosuch')")

    run = attrs.evolve(listener("x", free_port(), cwd=work_dir), prepare=prepare)
    services = make_services({"x": run})
    result = services.start("x")
    assert result == {"status": "failed", "error": "InvalidServiceDefinition('Service-def for x used invalid action: nosuch')"}


def test_shutdown_during_a_start_answers_did_not_start_properly(make_services: Any, work_dir: Path) -> None:
    import json

    run = listener("slow", free_port(), "--delay", "30", cwd=work_dir, timeout=20)
    services = make_services({"slow": run})
    services.agent.send("start-service", json.dumps({"name": "slow", "port": 0, "protocol": "tcp"}))
    wait_until(lambda: (c := services.child("slow")) is not None and c.pid is not None, timeout=10, what="spawned")
    services.agent.shutdown_service("slow")
    reply = services.agent.expect("service-result", timeout=10).json()
    assert reply == {"status": "failed", "error": f"the process did not start properly: {sys.executable}"}
    wait_until(lambda: services.stopped("slow"), timeout=10, what="slow stopped")


def test_an_actor_that_ends_before_its_answer_still_answers_failed(make_services: Any, work_dir: Path) -> None:
    import json

    import pykka

    release = threading.Event()
    command = ServiceCommand(argv=(sys.executable, "-c", "pass"), env={"PATH": "/usr/bin:/bin"}, cwd=work_dir)

    def prepare() -> ServiceCommand:
        release.wait(20)  # a prestart that takes its time: the actor stays PREPARING
        return command

    services = make_services({"stuck": ServiceRun(name="stuck", prepare=prepare, port=free_port())})
    try:
        services.agent.send("start-service", json.dumps({"name": "stuck", "port": 0, "protocol": "tcp"}))
        wait_until(lambda: services.child("stuck") is not None, timeout=10, what="the child")
        (actor,) = pykka.ActorRegistry.get_by_class(ServiceActor)
        actor.stop(timeout=5)  # ended from outside, as a crash would end it: no phase edge ran
        reply = services.agent.expect("service-result", timeout=10).json()
        assert reply == {"status": "failed", "error": "the process did not start properly: stuck"}
    finally:
        release.set()


# ---- the life as phases ----------------------------------------------------------------------------------


def phase_edges(log_lines: list[str], name: str) -> list[str]:
    """The phase changes the service's actors logged, in order: ["PREPARING -> STARTING", ...]."""
    tag = f"[service:{name}] phase "
    return [line.split(tag, 1)[1].split(":", 1)[0] for line in log_lines if tag in line]


def test_a_normal_life_goes_through_its_phases(make_services: Any, work_dir: Path, log_lines: list[str]) -> None:
    services = make_services({"web": listener("web", free_port(), cwd=work_dir)})
    assert services.start("web") == {"status": "started"}
    services.agent.shutdown_service("web")
    wait_until(lambda: services.stopped("web"), timeout=5, what="web stopped")
    assert phase_edges(log_lines, "web") == [
        "PREPARING -> STARTING", "STARTING -> RUNNING", "RUNNING -> STOPPING", "STOPPING -> ENDED",
    ]


def test_an_exit_after_the_port_opened_drains_and_ends(make_services: Any, work_dir: Path,
                                                       log_lines: list[str]) -> None:
    services = make_services({"once": listener("once", free_port(), "--exit-after", "0.2", "--code", "0",
                                               cwd=work_dir)})
    assert services.start("once") == {"status": "started"}
    wait_until(lambda: "RUNNING -> EXITING" in phase_edges(log_lines, "once") and services.child("once") is None,
               timeout=5, what="a clean exit forgotten (transient)")
    assert phase_edges(log_lines, "once") == [
        "PREPARING -> STARTING", "STARTING -> RUNNING", "RUNNING -> EXITING", "EXITING -> ENDED",
    ]


def test_an_exit_before_the_port_opened_is_a_failed_start(make_services: Any, work_dir: Path,
                                                         log_lines: list[str]) -> None:
    run = ServiceRun.fixed(name="bad", argv=(sys.executable, str(CHILDREN / "fail_fast.py"), "3"), env={}, cwd=work_dir,
                           port=free_port())
    services = make_services({"bad": run})
    assert services.start("bad")["status"] == "failed"
    wait_until(lambda: services.child("bad") is None, timeout=5, what="failed first start forgotten")
    assert phase_edges(log_lines, "bad") == ["PREPARING -> STARTING", "STARTING -> FAILING", "FAILING -> FAILED"]


def test_a_stop_while_preparing_answers_failed_and_ends_when_the_preparer_is_back(
    make_services: Any, work_dir: Path, log_lines: list[str]
) -> None:
    from kernel_runner.servicedefs import ServiceCommand

    release = threading.Event()

    def prepare() -> ServiceCommand:
        release.wait(10)  # bounded: the test sets it
        return ServiceCommand(argv=(sys.executable, "-c", "pass"), env={}, cwd=work_dir)

    services = make_services({"prep": attrs.evolve(listener("prep", free_port(), cwd=work_dir), prepare=prepare)})
    services.agent.send("start-service", json.dumps({"name": "prep", "port": 0, "protocol": "tcp"}))
    wait_until(lambda: services.child("prep") is not None, timeout=5, what="prep in the tree")
    services.agent.shutdown_service("prep")
    reply = services.agent.expect("service-result", timeout=5).json()
    # No command yet, so the service's name stands for the program.
    assert reply == {"status": "failed", "error": "the process did not start properly: prep"}
    assert phase_edges(log_lines, "prep") == ["PREPARING -> STOPPING"], "it must wait for the Preparer"
    assert services.child("prep").state is ChildState.STOPPING
    release.set()
    wait_until(lambda: services.stopped("prep"), timeout=5, what="prep stopped")
    assert phase_edges(log_lines, "prep") == ["PREPARING -> STOPPING", "STOPPING -> ENDED"]
    assert not any("[service:prep] spawned" in line for line in log_lines), "nothing is spawned after a stop"
    assert not [r for r in services.agent._stash if r.type == "service-result"], "exactly one reply"


def test_a_noop_service_goes_straight_to_running(make_services: Any, work_dir: Path, log_lines: list[str]) -> None:
    services = make_services({"noop": ServiceRun.fixed(name="noop", argv=(), env={}, cwd=work_dir, port=None)})
    assert services.start("noop") == {"status": "started"}
    services.agent.shutdown_service("noop")
    wait_until(lambda: services.stopped("noop"), timeout=5, what="noop stopped")
    assert phase_edges(log_lines, "noop") == ["PREPARING -> RUNNING", "RUNNING -> STOPPING", "STOPPING -> ENDED"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Phase.RUNNING, Phase.STARTING),  # a life never goes back
        (Phase.STOPPING, Phase.RUNNING),  # a port that opens after a stop must not answer `started`
        (Phase.STOPPING, Phase.FAILED),  # a stopped start was answered already
        (Phase.RUNNING, Phase.FAILED),  # `started` was answered: a later failure is an exit, not a failed start
        (Phase.EXITING, Phase.FAILED),
        (Phase.PREPARING, Phase.EXITING),  # no process to exit yet
        (Phase.STARTING, Phase.ENDED),  # a start ends as RUNNING, FAILED or through STOPPING, never silently
        (Phase.ENDED, Phase.STOPPING),
        (Phase.FAILED, Phase.RUNNING),
    ],
)
def test_the_transition_table_rejects_edges_that_must_never_happen(old: Phase, new: Phase) -> None:
    machine = PhaseMachine(old, LIFECYCLE.transitions, log=lambda: logger)
    with pytest.raises(InvalidTransition):
        machine.to(new)
    assert machine.phase is old


def test_the_tables_cover_every_phase_and_the_ends_are_terminal() -> None:
    assert set(LIFECYCLE.transitions) == set(Phase) == set(LIFECYCLE.child_states)
    assert [p for p, edges in LIFECYCLE.transitions.items() if not edges] == [Phase.FAILED, Phase.ENDED]
    # Every phase but the ends can be stopped, and every life can reach an end.
    assert all(Phase.STOPPING in LIFECYCLE.transitions[p] for p in Phase if p not in (Phase.STOPPING, Phase.FAILED, Phase.ENDED))
    assert {LIFECYCLE.child_states[Phase.FAILED], LIFECYCLE.child_states[Phase.ENDED]} == {None}
