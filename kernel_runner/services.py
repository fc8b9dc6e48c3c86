"""ServiceDirectory: turns service ops into supervised ServiceActor children, using the service-definition catalog."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pykka
from loguru import logger

from kernel_runner.actors.base import ChildContext
from kernel_runner.actors.service import ServiceActor, ServiceRun
from kernel_runner.config import RunnerConfig
from kernel_runner.ids import ChildId, health_child, service_child
from kernel_runner.messages import (
    AppsResult,
    ModelServiceResult,
    ServiceInfo,
    ServiceResult,
    StartModelService,
    StartService,
)
from kernel_runner.policy import RestartType
from kernel_runner.servicedefs import DefinitionError, Intrinsics, RestartOverride, ServiceCatalog, ServiceLaunch
from kernel_runner.supervisor import ChildSpec

# A service that stays up this long counts as recovered: its next crash starts backoff from the beginning.
SERVICE_STABLE_AFTER_S = 3.0

ReplyKind = Literal["service", "model", "none"]


def service_child_spec(
    launch: ServiceLaunch,
    config: RunnerConfig,
    *,
    reply: ReplyKind,
    watcher: ChildId | None = None,
    wait_for_port: bool = True,
    default_restart: RestartType = "transient",
) -> ChildSpec:
    """One ServiceActor child; a definition's optional `restart` block overrides the runner's defaults."""
    child_id = service_child(launch.name)
    log = logger.bind(child=child_id)
    override = launch.restart or RestartOverride()
    restart: RestartType = override.policy or default_restart
    backoff = config.restart.backoff(initial_s=override.backoff_initial_s, cap_s=override.backoff_cap_s)
    intensity = config.restart.intensity(max_restarts=override.max_restarts, period_s=override.period_s)

    def prepare() -> Any:
        return launch.prepare(log=log.log)

    run = ServiceRun(
        name=launch.name,
        prepare=prepare,
        port=launch.port if wait_for_port else None,
        noop=launch.noop,
        launch_timeout_s=config.service_launch_timeout_s,
        watcher=watcher,
    )

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return ServiceActor.start(ctx=ctx, run=run, reply=reply)

    return ChildSpec(
        child_id=child_id,
        factory=factory,
        restart=restart,
        shutdown_s=config.service_stop_grace_s,
        backoff=backoff,
        intensity=intensity,
        stable_after_s=SERVICE_STABLE_AFTER_S,
        tier=2,
    )


class ServiceDirectory:
    """The runner's ServicePlanner. Called only from the supervisor's thread, so its catalog needs no lock."""

    def __init__(
        self,
        *,
        config: RunnerConfig,
        catalog: ServiceCatalog,
        intrinsics: Intrinsics,
        child_env: dict[str, str],
        runtime_path: str | None,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._intrinsics = intrinsics
        self._child_env = child_env
        self._runtime_path = runtime_path
        self.log = logger.bind(child="services")

    @property
    def catalog(self) -> ServiceCatalog:
        return self._catalog

    def has_intrinsic(self, name: str) -> bool:
        return {"sshd": self._intrinsics.sshd, "ttyd": self._intrinsics.ttyd}.get(name) is not None

    def apps(self, name: str | None) -> AppsResult:
        return AppsResult(apps=tuple(self._catalog.apps(name)))

    def resolve(self, info: ServiceInfo) -> ServiceLaunch | ServiceResult:
        result = self._catalog.resolve(
            info,
            lang=self._config.lang,
            runtime_path=self._runtime_path,
            child_env=self._child_env,
            work_dir=Path(self._config.work_dir),
            sshd=self._intrinsics.sshd,
            ttyd=self._intrinsics.ttyd,
        )
        if isinstance(result, ServiceResult) and result.error == "unsupported service":
            self.log.warning("The service {} is not supported.", info.name)
        return result

    def plan_service(self, request: StartService) -> ChildSpec | ServiceResult:
        launch = self.resolve(request.info)
        if isinstance(launch, ServiceResult):
            return launch
        return service_child_spec(launch, self._config, reply="service")

    def plan_model_service(self, request: StartModelService) -> Sequence[ChildSpec] | ModelServiceResult:
        try:
            catalog, info = self._catalog.with_model_service(request.model)
        except DefinitionError as exc:
            for problem in exc.problems:
                self.log.error("{}", problem)
            return ModelServiceResult(status="failed", error=exc.reply)
        self._catalog = catalog  # get-apps lists model services after the files, in the order they were added
        launch = self.resolve(info)
        if isinstance(launch, ServiceResult):
            return ModelServiceResult(status="failed", error=launch.error)
        from kernel_runner.model_services import model_child_specs

        return model_child_specs(request.model, launch, self._config)

    def service_child_ids(self, name: str) -> Sequence[ChildId]:
        return (service_child(name), health_child(name))
