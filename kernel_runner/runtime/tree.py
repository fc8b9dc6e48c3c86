"""Child specs for service processes, and for model services: a server plus (usually) its health checker.

Who answers the agent for a model service depends on the agent generation's contract (docs/protocol.md §7.2, §12.2);
`model_child_specs` gives the request's answer to that child. The server's ServiceActor tells its checker (through
the child directory) when it is up and when its process ends.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pykka
from loguru import logger

from kernel_runner.context import RunnerContext
from kernel_runner.generations import ModelReply
from kernel_runner.ids import ChildId, health_child, service_child
from kernel_runner.messages import HealthCheck, ModelInfo, ServiceAnswer
from kernel_runner.observability.debug_lines import log_at
from kernel_runner.servicedefs import RestartOverride, ServiceLaunch
from kernel_runner.supervision.policy import NO_FATAL_RETRY, FatalRetry, RestartType
from kernel_runner.supervision.spec import ChildContext, ChildSpec
from kernel_runner.wire.answers import service_reject

if TYPE_CHECKING:
    from kernel_runner.actors.health.actor import HealthPlan

# A service that stays up this long counts as recovered: its next crash starts backoff from the beginning.
SERVICE_STABLE_AFTER_S = 3.0
# The language runner's tier: services stop together with it and the kernel, within the one deadline.
SERVICE_TIER = 1
# Probes (tier 3) stop before the servers they watch (tier 2), so a stopping server is not reported unhealthy.
HEALTH_TIER = 3
HEALTH_SHUTDOWN_S = 1.0


def service_child_spec(
    launch: ServiceLaunch,
    runner: RunnerContext,
    *,
    answer: ServiceAnswer | None,
    watcher: ChildId | None = None,
    wait_for_port: bool = True,
    default_restart: RestartType = "transient",
) -> ChildSpec:
    """One ServiceActor child; a definition's optional `restart` block overrides the runner's defaults.

    A failed first start is answered `failed` and not retried (the agent may ask again); a service that was up once
    is restarted by its policy when it dies.
    """
    from kernel_runner.actors.service.actor import ServiceActor, ServiceRun  # loaded with the first service (§2.1)

    config = runner.config
    log = logger.bind(child=service_child(launch.name))
    override = launch.restart or RestartOverride()

    def prepare() -> Any:
        return launch.prepare(log=functools.partial(log_at, log))  # a definition's `log` action may say DEBUG

    run = ServiceRun(
        name=launch.name,
        prepare=prepare,
        port=launch.port if wait_for_port else None,
        noop=launch.noop,
        reply_within_s=runner.service_reply_within_s(),
        start_limit_s=config.service_start_limit_s,
        watcher=watcher,
    )

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return ServiceActor.start(ctx=ctx, runner=runner, run=run, answer=answer)

    return ChildSpec(
        child_id=service_child(launch.name),
        factory=factory,
        restart=override.policy or default_restart,
        shutdown_s=config.service_stop_grace_s,
        backoff=config.restart.backoff(initial_s=override.backoff_initial_s, cap_s=override.backoff_cap_s),
        intensity=config.restart.intensity(max_restarts=override.max_restarts, period_s=override.period_s),
        stable_after_s=SERVICE_STABLE_AFTER_S,
        retry_failed_start=False,
        # A model server's checker is stopped for good when the server gives up: retried alone, it would run unwatched.
        fatal_retry=NO_FATAL_RETRY if watcher is not None else FatalRetry(),
        tier=SERVICE_TIER,
        reject=service_reject(launch.name),
    )


def model_child_specs(model: ModelInfo, launch: ServiceLaunch, runner: RunnerContext, *,
                      contract: ModelReply, answer: ServiceAnswer) -> Sequence[ChildSpec]:
    """The children to start, in order: the server, then (when someone must watch it) its checker.

    The server is `permanent`: it is meant to run for the session, so any exit is restarted (with backoff and the
    intensity limit); shutdown-service stops it for good. The checker is `transient`: it ends normally once the
    model service has ended, and is bound to its server, so it goes when the server gives up.

    Who answers the agent depends on the contract (docs/protocol.md §7.2, §12.2):
    - VERDICT with a health check: the checker, after the start-up probes; without one, the server once its port
      opens (no checker).
    - SPAWNED: the server, as soon as its process runs; the checker only reports health (`model-service-status`):
      by probing, or, without an enabled health check, by following the server's process (up: healthy).
    """
    from kernel_runner.actors.health.actor import HealthCheckerActor, HealthMemo, Phase  # loaded with the first model (§2.1)

    service = model.service
    assert service is not None  # with_model_service refused a model without `service`
    check = service.health_check
    verdict = contract is ModelReply.VERDICT
    if verdict and (check is None or not check.probing):
        return [service_child_spec(launch, runner, answer=answer, wait_for_port=True, default_restart="permanent")]
    checker_id = health_child(launch.name)
    server = service_child_spec(
        launch, runner, answer=None if verdict else answer, watcher=checker_id, wait_for_port=False,
        default_restart="permanent",
    )
    plan = health_plan(model.name, launch.name, service.port, check, runner, contract=contract,
                       answer=answer if verdict else None)
    # Under SPAWNED the server answers the agent and there is no start-up phase: the checker starts in LIVENESS.
    memo = HealthMemo() if verdict else HealthMemo(phase=Phase.LIVENESS, replied=True)

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return HealthCheckerActor.start(ctx=ctx, runner=runner, plan=plan, memo=memo)

    restart = runner.config.restart
    checker = ChildSpec(
        child_id=checker_id,
        factory=factory,
        restart="transient",  # a crashed checker is a bug, but the model must not go unwatched
        shutdown_s=HEALTH_SHUTDOWN_S,
        backoff=restart.backoff(initial_s=0.05),
        intensity=restart.intensity(),
        stable_after_s=restart.stable_after_s,
        binds_to=server.child_id,
        tier=HEALTH_TIER,
    )
    return [server, checker]


def health_plan(model_name: str, service_name: str, port: int, check: HealthCheck | None, runner: RunnerContext, *,
                contract: ModelReply = ModelReply.VERDICT, answer: ServiceAnswer | None = None) -> HealthPlan:
    from kernel_runner.actors.health.actor import HealthPlan

    config = runner.config
    spawned = contract is ModelReply.SPAWNED
    probing = check is not None and check.probing
    path = "/" if check is None else check.path if check.path.startswith("/") else f"/{check.path}"  # §7.2
    return HealthPlan(
        model_name=model_name,
        service_name=service_name,
        server_child=service_child(service_name),
        url=f"http://127.0.0.1:{port}{path}",
        check=check if check is not None else HealthCheck(path=path),
        contract=contract,
        answer=answer,
        probing=probing,
        startup_period_s=config.model_startup_probe_period_s,
        interval_s=check.interval if check is not None and check.interval is not None else config.model_probe_interval_s,
        send_status=config.model_status_messages,
        # Upstream never stops or restarts a model for failing its checks from 23.09.1 on (docs/protocol.md §12.2).
        stop_on_startup_failure=config.model_stop_on_startup_failure and not spawned,
        restart_on_unhealthy=config.model_restart_on_unhealthy and not spawned,
    )


__all__ = ["health_plan", "model_child_specs", "service_child_spec"]
