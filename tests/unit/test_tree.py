"""The tree as runtime/tree.py declares it: the shutdown order docs/architecture.md §2 describes, each child's restart
type and budget, and which query delegate each language uses. Nothing is started: a spec's factory is never called
here (the actors themselves are tested in tests/actors)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from kernel_runner import RunnerConfig
from kernel_runner.actors.kernel.actor import KernelSettings
from kernel_runner.actors.router.actor import BoundPorts
from kernel_runner.actors.service_manager.actor import ServicePlanner
from kernel_runner.context import RunnerContext
from kernel_runner.generations import ModelReply
from kernel_runner.ids import (
    KERNEL_CHILD,
    LANG_CHILD,
    POLLY_CHILD,
    ROUTER_CHILD,
    SERVICES_CHILD,
    TERMINAL_CHILD,
    health_child,
    service_child,
)
from kernel_runner.langs import REGISTRY
from kernel_runner.messages import HealthCheck, ModelInfo, ModelServiceSpec
from kernel_runner.runtime.tree import (
    Tier,
    first_children,
    kernel_child_spec,
    model_child_specs,
    polly_child_spec,
    query_delegate,
    service_child_spec,
    terminal_child_spec,
)
from kernel_runner.servicedefs import ServiceLaunch
from kernel_runner.supervision.policy import Backoff
from kernel_runner.supervision.spec import ChildSpec
from kernel_runner.wire.answers import ModelStartAnswer, ServiceStartAnswer
from kernel_runner.wire.outbox import RouterLink
from kernel_runner.wire.status import StartupGate, StatusBoard


@pytest.fixture
def runner(runner_config: RunnerConfig) -> RunnerContext:
    return RunnerContext(config=runner_config, router=RouterLink(1))


def core(runner: RunnerContext) -> dict[str, ChildSpec]:
    # The planner is never asked here (no factory runs), so a bare object stands in for it.
    specs = first_children(runner, ports=BoundPorts(0, 0), board=StatusBoard(StartupGate()), started_at=0.0,
                           on_event=lambda event: None, metrics=None, planner=cast(ServicePlanner, object()),
                           start_intrinsics=False)
    return {spec.child_id: spec for spec in specs}


def test_the_tiers_stop_in_the_documented_order_with_their_values() -> None:
    # Service manager first, then health checkers, then the terminal (and Polly), then services with the language
    # runner and the kernel, the router last.
    assert sorted(Tier, reverse=True) == [Tier.NO_NEW_STARTS, Tier.BEFORE_WATCHED, Tier.BEFORE_LANG_RUNNER,
                                          Tier.PROCESSES_TOGETHER, Tier.FINAL_ANSWERS]
    assert [int(tier) for tier in sorted(Tier, reverse=True)] == [4, 3, 2, 1, 0]


def test_the_first_children_in_start_order_with_their_tiers_and_budgets(runner: RunnerContext) -> None:
    specs = core(runner)
    assert list(specs) == [ROUTER_CHILD, LANG_CHILD, SERVICES_CHILD]
    restart = runner.config.restart
    router, lang, services = specs[ROUTER_CHILD], specs[LANG_CHILD], specs[SERVICES_CHILD]
    assert all(spec.restart == "permanent" and not spec.problems() for spec in specs.values())
    assert (router.tier, lang.tier, services.tier) == (Tier.FINAL_ANSWERS, Tier.PROCESSES_TOGETHER, Tier.NO_NEW_STARTS)
    assert (router.shutdown_s, lang.shutdown_s, services.shutdown_s) == (1.0, 3.0, 1.0)
    # Without the router nothing works: when it gives up, the runner shuts down; the others stay FATAL.
    assert (router.on_give_up, lang.on_give_up, services.on_give_up) == ("shut_down_runner", "stay_fatal", "stay_fatal")
    assert router.backoff == Backoff(initial_s=0.05, cap_s=1.0, jitter=0.1)
    assert lang.backoff == restart.backoff()
    assert services.backoff == restart.backoff(initial_s=0.05)
    assert router.intensity == lang.intensity == services.intensity == restart.intensity()
    assert router.reject is None and lang.reject is not None and services.reject is not None


@pytest.mark.parametrize(
    ("lang", "delegate", "completes"),
    [("python", KERNEL_CHILD, True), ("julia", KERNEL_CHILD, True), ("r", KERNEL_CHILD, True),
     ("vendor.h2o", KERNEL_CHILD, True), ("git", TERMINAL_CHILD, False), ("vendor.aws_polly", POLLY_CHILD, False)],
)
def test_the_languages_with_a_query_delegate(lang: str, delegate: str, completes: bool) -> None:
    found = query_delegate(lang)
    assert found is not None and (found.child_id, found.completes) == (delegate, completes)


def test_every_other_language_runs_its_queries_itself_or_refuses_them() -> None:
    with_delegate = {"python", "julia", "r", "vendor.h2o", "git", "vendor.aws_polly"}
    others = sorted(set(REGISTRY) - with_delegate)
    assert "app" in others and "c" in others
    assert {lang: query_delegate(lang) for lang in others} == dict.fromkeys(others)


def test_the_delegates_tiers_and_budgets(runner: RunnerContext) -> None:
    restart = runner.config.restart
    kernel = kernel_child_spec(runner, KernelSettings(kernel_name="python3"))
    terminal = terminal_child_spec(runner)
    polly = polly_child_spec(runner)
    assert (kernel.child_id, terminal.child_id, polly.child_id) == (KERNEL_CHILD, TERMINAL_CHILD, POLLY_CHILD)
    # The kernel's process stops with the language runner's; the terminal and Polly stop before the language runner.
    assert (kernel.tier, terminal.tier, polly.tier) == (Tier.PROCESSES_TOGETHER, Tier.BEFORE_LANG_RUNNER,
                                                        Tier.BEFORE_LANG_RUNNER)
    assert (kernel.shutdown_s, terminal.shutdown_s, polly.shutdown_s) == (3.0, 2.0, 1.0)
    assert (kernel.stable_after_s, terminal.stable_after_s, polly.stable_after_s) == (10.0, 3.0, 3.0)
    for spec in (kernel, terminal, polly):
        assert spec.restart == "permanent" and not spec.problems()
        assert (spec.backoff, spec.intensity) == (restart.backoff(), restart.intensity())
        assert spec.reject is not None


def test_services_stop_with_the_processes_and_their_checkers_before_them(runner: RunnerContext, tmp_path: Path) -> None:
    launch = ServiceLaunch(name="m-1", origin="intrinsic", cwd=tmp_path, port=1, arguments=("true",), base_env={})
    plain = service_child_spec(launch, runner, answer=ServiceStartAnswer(runner.router.tell))
    assert (plain.child_id, plain.restart, plain.tier) == (service_child("m-1"), "transient", Tier.PROCESSES_TOGETHER)
    model = ModelInfo(name="m", service=ModelServiceSpec(start_command=("x",), port=1,
                                                          health_check=HealthCheck(path="/health")))
    server, checker = model_child_specs(model, launch, runner, contract=ModelReply.VERDICT,
                                        answer=ModelStartAnswer(runner.router.tell))
    assert (server.restart, server.tier) == ("permanent", Tier.PROCESSES_TOGETHER)
    assert (checker.child_id, checker.binds_to, checker.restart) == (health_child("m-1"), server.child_id, "transient")
    assert checker.tier == Tier.BEFORE_WATCHED and checker.tier > server.tier
    assert [spec.problems() for spec in (plain, server, checker)] == [[], [], []]
