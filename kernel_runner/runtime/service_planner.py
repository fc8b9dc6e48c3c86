"""DefinitionPlanner: turns service ops into child specs for ServiceActor children, from the service-definition catalog.

It is the planner the ServiceManagerActor uses (actors/services.py); it decides *what* to start, the supervisor starts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from loguru import logger

from kernel_runner.actors.service_manager.actor import LoadedDefinitions
from kernel_runner.context import RunnerContext
from kernel_runner.generations import ModelReply
from kernel_runner.ids import ChildId, health_child, service_child
from kernel_runner.messages import ServiceDefinitionsReloaded, ServiceInfo, StartModelService, StartService
from kernel_runner.runtime.tree import intrinsic_child_spec, model_child_specs, service_child_spec
from kernel_runner.servicedefs import (
    UNSUPPORTED,
    DefinitionError,
    Intrinsics,
    Preopened,
    Refusal,
    ServiceCatalog,
    ServiceDefinition,
    ServiceLaunch,
    SshdSetupError,
    apply_sshd_setup,
    load_service_definitions,
    plan_sshd_setup,
)
from kernel_runner.supervision.spec import ChildSpec

INTRINSIC_NAMES = (("sshd", "sshd_port"), ("ttyd", "ttyd_port"))


def read_service_definitions(service_defs_dir: Path, runtime_path: str | None) -> LoadedDefinitions:
    """Read every definition file (blocking file I/O: at start-up, or on a reload's helper thread)."""
    catalog, problems = load_service_definitions(service_defs_dir, variables={"runtime_path": str(runtime_path)})
    return LoadedDefinitions(catalog=catalog, problems=tuple(problems))


class DefinitionPlanner:
    """The runner's service planner; used from the ServiceManagerActor's thread only, so its catalog needs no lock."""

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

    def apps(self, name: str | None) -> Sequence[Mapping[str, Any]]:
        return self._catalog.apps(name)

    def resolve(self, info: ServiceInfo) -> ServiceLaunch | Refusal | Preopened:
        config = self._runner.config
        result = self._catalog.resolve(
            info,
            lang=config.lang,
            runtime_path=self._runtime_path,
            child_env=dict(self._runner.env),
            work_dir=Path(config.work_dir),
            sshd=self._intrinsics.sshd,
            ttyd=self._intrinsics.ttyd,
            intrinsic_probes=self._intrinsics.probes,
        )
        if result == Refusal(UNSUPPORTED):
            self.log.warning("The service {} is not supported.", info.name)
        return result

    def plan_service(self, request: StartService) -> Sequence[ChildSpec] | Refusal | Preopened:
        launch = self.resolve(request.info)
        if not isinstance(launch, ServiceLaunch):
            return launch
        # An operator's start is answered by the service manager (at_child_start); the service answers nobody.
        answer = None if request.answer.at_child_start else request.answer
        return [service_child_spec(launch, self._runner, answer=answer)]

    def plan_model_service(self, request: StartModelService) -> Sequence[ChildSpec] | Refusal | Preopened:
        try:
            catalog, info = self._catalog.with_model_service(request.model)
        except DefinitionError as exc:
            for problem in exc.problems:
                self.log.error("{}", problem)
            return Refusal(exc.reply)
        self._catalog = catalog  # get-apps lists model services after the files, in the order they were added
        launch = self.resolve(info)
        if not isinstance(launch, ServiceLaunch):
            return launch
        # The payload's shape may prove a newer agent than we assumed (docs/protocol.md §12.1).
        contract = self._runner.generations.observe(request.model.evidence).row.model_reply
        model_path = request.model.model_path
        if contract is ModelReply.SPAWNED and model_path:
            # 23.09.1+: the server runs in the model's folder (docs/protocol.md §7.2 step 3).
            if not Path(model_path).is_dir():
                return Refusal(f"the model directory does not exist: {model_path}")
            launch = attrs.evolve(launch, cwd=Path(model_path), prestart_dir=launch.cwd)
        return model_child_specs(request.model, launch, self._runner, contract=contract, answer=request.answer)

    def read_definitions(self) -> LoadedDefinitions:
        """Reread the folder; safe on any thread (it reads only the config), so the actor can keep it off its own."""
        return read_service_definitions(self._runner.config.service_defs_dir, self._runtime_path)

    def apply_definitions(self, loaded: LoadedDefinitions) -> ServiceDefinitionsReloaded:
        """Swap in a reread catalog (docs/protocol.md §6.3, "Reloading"), from the ServiceManagerActor's thread.

        A file that no longer loads keeps the last good definition of its name: a typo made while editing must not take
        away a service that worked (the problem is logged; `start-service` keeps using the old one). A file that never
        loaded is reported as at start-up. Model services came over the wire, not from the folder: they stay.
        """
        old, new = self._catalog, loaded.catalog
        old_files = {name: d for name, d in old.definitions.items() if name not in old.model_services}
        kept = {name: old_files[name] for name in new.broken if name in old_files}
        files = {**new.definitions, **kept}
        merged: dict[str, ServiceDefinition] = {
            name: files[name] for name in sorted(files, key=lambda name: f"{name}.json")  # the loader's file order
        }
        models = {name: old.definitions[name] for name in old.definitions if name in old.model_services}
        merged.update(models)
        broken = {name: value for name, value in new.broken.items() if name not in kept and name not in models}
        self._catalog = attrs.evolve(
            new, definitions=merged, broken=broken, model_services=old.model_services,
            has_parser=new.has_parser or bool(models),
        )
        for name, value in new.broken.items():
            for problem in value.problems:
                if name in kept:
                    self.log.error("service definition not reloaded, keeping the previous one: {}", problem)
                else:
                    self.log.error("service definition skipped: {}", problem)
        for problem in loaded.problems:
            if not any(problem in value.problems for value in new.broken.values()):
                self.log.error("{}", problem)  # not about one file (the folder could not be listed)
        return ServiceDefinitionsReloaded(
            loaded=len(new.definitions),
            added=tuple(sorted(name for name in files if name not in old_files)),
            changed=tuple(sorted(name for name in new.definitions if name in old_files and old_files[name] != files[name])),
            removed=tuple(sorted(name for name in old_files if name not in files)),
            invalid=tuple(new.broken),
            kept=tuple(kept),
            problems=tuple(problem for value in new.broken.values() for problem in value.problems),
        )

    def service_child_ids(self, name: str) -> Sequence[ChildId]:
        # The checker first: stopping the server first would make its checker report it unhealthy.
        return (health_child(name), service_child(name))

    def intrinsic_specs(self) -> Sequence[ChildSpec]:
        """sshd keys, then sshd and ttyd as permanent children (docs/protocol.md §1.6, §6.10); blocking file I/O."""
        config, log = self._runner.config, logger.bind(child="intrinsic")
        if self._intrinsics.sshd is not None:
            if self._intrinsics.agent_host_key is not None:
                log.info("sshd serves the agent's host key {}", self._intrinsics.agent_host_key)
            plan = plan_sshd_setup(config, environ=self._runner.runner_env,
                                   agent_host_key=self._intrinsics.agent_host_key)
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
            if isinstance(launch, Refusal):
                log.error("{} cannot start: {}", name, launch.reason)
                continue
            assert isinstance(launch, ServiceLaunch)  # only protocol `preopen` is Preopened
            specs.append(intrinsic_child_spec(launch, self._runner))
        return specs


__all__ = ["DefinitionPlanner", "read_service_definitions"]
