"""ServiceDirectory: turns service ops into child specs for ServiceActor children, from the service-definition catalog.

It is the planner the ServicesActor uses (actors/services.py); it decides *what* to start, the supervisor starts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from kernel_runner.context import RunnerContext
from kernel_runner.ids import ChildId, health_child, service_child
from kernel_runner.messages import (
    AppsResult,
    ModelServiceResult,
    ServiceInfo,
    ServiceResult,
    StartModelService,
    StartService,
)
from kernel_runner.service_specs import model_child_specs, service_child_spec
from kernel_runner.servicedefs import (
    DefinitionError,
    Intrinsics,
    ServiceCatalog,
    ServiceLaunch,
    SshdSetupError,
    apply_sshd_setup,
    plan_sshd_setup,
)
from kernel_runner.supervision import ChildSpec

INTRINSIC_NAMES = (("sshd", "sshd_port"), ("ttyd", "ttyd_port"))


class ServiceDirectory:
    """The runner's service planner; used from the ServicesActor's thread only, so its catalog needs no lock."""

    def __init__(
        self,
        *,
        runner: RunnerContext,
        catalog: ServiceCatalog,
        intrinsics: Intrinsics,
        runtime_path: str | None,
    ) -> None:
        self._runner = runner
        self._catalog = catalog
        self._intrinsics = intrinsics
        self._runtime_path = runtime_path
        self.log = logger.bind(child="services")

    def apps(self, name: str | None) -> AppsResult:
        return AppsResult(apps=tuple(self._catalog.apps(name)))

    def resolve(self, info: ServiceInfo) -> ServiceLaunch | ServiceResult:
        config = self._runner.config
        result = self._catalog.resolve(
            info,
            lang=config.lang,
            runtime_path=self._runtime_path,
            child_env=dict(self._runner.env),
            work_dir=Path(config.work_dir),
            sshd=self._intrinsics.sshd,
            ttyd=self._intrinsics.ttyd,
        )
        if isinstance(result, ServiceResult) and result.error == "unsupported service":
            self.log.warning("The service {} is not supported.", info.name)
        return result

    def plan_service(self, request: StartService) -> Sequence[ChildSpec] | ServiceResult:
        launch = self.resolve(request.info)
        if isinstance(launch, ServiceResult):
            return launch
        return [service_child_spec(launch, self._runner, reply="service")]

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
        return model_child_specs(request.model, launch, self._runner)

    def service_child_ids(self, name: str) -> Sequence[ChildId]:
        # The checker first: stopping the server first would make its checker report it unhealthy.
        return (health_child(name), service_child(name))

    def intrinsic_specs(self) -> Sequence[ChildSpec]:
        """sshd keys, then sshd and ttyd as permanent children (docs/protocol.md §1.6, §6.10); blocking file I/O."""
        config, log = self._runner.config, logger.bind(child="intrinsic")
        if self._intrinsics.sshd is not None:
            plan = plan_sshd_setup(config, environ=self._runner.runner_env)
            try:
                for warning in apply_sshd_setup(plan, env=self._runner.env):
                    log.warning("{}", warning)
            except SshdSetupError as exc:
                log.error("{}; sshd may refuse logins", exc)
        specs = []
        for name, attr in INTRINSIC_NAMES:
            port = getattr(config, attr)
            if getattr(self._intrinsics, name) is None or port is None:
                continue
            launch = self.resolve(ServiceInfo(name=name, port=port, ports=(port,), protocol="tcp"))
            if isinstance(launch, ServiceResult):
                log.error("{} cannot start: {}", name, launch.error)
                continue
            # Nobody asked, so nobody gets a reply; an agent's later start-service for it is answered `running`.
            specs.append(service_child_spec(launch, self._runner, reply="none", default_restart="permanent"))
        return specs


__all__ = ["ServiceDirectory"]
