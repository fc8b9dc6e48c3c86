"""Model services (spec §7): the child specs for one `start-model-service`: its server, and its health checker.

Who answers the agent:
- no health_check: the server's ServiceActor, `started` once the port opens (spec §7.5 recommendation: the start
  result, never upstream's `service unhealthy` for a healthy start);
- with a health_check: the HealthCheckerActor, `started` at the first expected status, `failed` when the budget is
  spent or the server dies first. The server's ServiceActor neither waits for the port nor replies; it tells the
  checker when its process ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pykka

from kernel_runner.actors.base import ChildContext
from kernel_runner.actors.health import HealthCheckerActor, HealthMemo, HealthPlan
from kernel_runner.config import RunnerConfig
from kernel_runner.ids import health_child, service_child
from kernel_runner.messages import HealthCheck, ModelInfo
from kernel_runner.servicedefs import ServiceLaunch
from kernel_runner.services import service_child_spec
from kernel_runner.supervisor import ChildSpec

# Stop order: probes (tier 3) before the servers they watch (tier 2), so a stopping server is not reported unhealthy.
HEALTH_TIER = 3
HEALTH_SHUTDOWN_S = 1.0


def model_child_specs(model: ModelInfo, launch: ServiceLaunch, config: RunnerConfig) -> Sequence[ChildSpec]:
    """The children the supervisor starts, in order: the server, then (with a health_check) its checker.

    A model server is `permanent`: it is meant to run for the session, so any exit is restarted (with backoff and
    the intensity limit); shutdown-service and a failed startup stop it for good.
    """
    service = model.service
    assert service is not None  # with_model_service refused a model without `service`
    check = service.health_check
    if check is None:
        return [service_child_spec(launch, config, reply="model", wait_for_port=True, default_restart="permanent")]
    checker_id = health_child(launch.name)
    server = service_child_spec(
        launch, config, reply="none", watcher=checker_id, wait_for_port=False, default_restart="permanent"
    )
    plan = health_plan(model.name, launch.name, service.port, check, config)
    memo = HealthMemo()

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return HealthCheckerActor.start(ctx=ctx, plan=plan, memo=memo)

    restart = config.restart
    checker = ChildSpec(
        child_id=checker_id,
        factory=factory,
        restart="permanent",  # a crashed checker is a bug, but the model must not go unwatched
        shutdown_s=HEALTH_SHUTDOWN_S,
        backoff=restart.backoff(initial_s=0.05),
        intensity=restart.intensity(),
        stable_after_s=restart.stable_after_s,
        tier=HEALTH_TIER,
    )
    return [server, checker]


def health_plan(model_name: str, service_name: str, port: int, check: HealthCheck, config: RunnerConfig) -> HealthPlan:
    path = check.path if check.path.startswith("/") else f"/{check.path}"  # upstream appended it verbatim (§7.2)
    return HealthPlan(
        model_name=model_name,
        service_name=service_name,
        server_child=service_child(service_name),
        url=f"http://127.0.0.1:{port}{path}",
        check=check,
        startup_period_s=config.model_startup_probe_period_s,
        interval_s=check.interval if check.interval is not None else config.model_probe_interval_s,
        send_status=config.model_status_messages,
        stop_on_startup_failure=config.model_stop_on_startup_failure,
        restart_on_unhealthy=config.model_restart_on_unhealthy,
    )


__all__ = ["health_plan", "model_child_specs"]
