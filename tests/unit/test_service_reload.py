"""DefinitionPlanner.apply_definitions: what a reload (SIGHUP) keeps, adds, changes and removes (docs/protocol.md §6.3)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kernel_runner.config import RunnerConfig
from kernel_runner.context import RunnerContext
from kernel_runner.messages import ModelInfo, ModelServiceSpec, ServiceInfo, StartModelService
from kernel_runner.runtime.service_planner import DefinitionPlanner, read_service_definitions
from kernel_runner.servicedefs import Intrinsics, Preopened, Refusal, ServiceLaunch
from kernel_runner.wire.outbox import RouterLink


def write(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.json").write_text(text)


def definition(*argv: str) -> str:
    return json.dumps({"command": [sys.executable, *argv]})


def directory_for(runner_config: RunnerConfig) -> DefinitionPlanner:
    loaded = read_service_definitions(runner_config.service_defs_dir, sys.executable)
    return DefinitionPlanner(runner=RunnerContext(config=runner_config, router=RouterLink(1)), catalog=loaded.catalog,
                            intrinsics=Intrinsics(sshd=None, ttyd=None), runtime_path=sys.executable)


def resolve(services: DefinitionPlanner, name: str) -> ServiceLaunch | Refusal | Preopened:
    return services.resolve(ServiceInfo(name=name, port=9, ports=(9,), protocol="tcp"))


def test_a_reload_adds_changes_and_removes(runner_config: RunnerConfig) -> None:
    defs = runner_config.service_defs_dir
    defs.mkdir()
    write(defs, "same", definition("-c", "pass"))
    write(defs, "edited", definition("-V"))
    write(defs, "gone", definition("-V"))
    services = directory_for(runner_config)
    write(defs, "edited", definition("-VV"))
    (defs / "gone.json").unlink()
    write(defs, "new", definition("-V"))
    summary = services.apply_definitions(services.read_definitions())
    assert (summary.loaded, summary.added, summary.changed, summary.removed, summary.invalid, summary.kept) == (
        3, ("new",), ("edited",), ("gone",), (), ())
    assert [app["name"] for app in services.apps(None)] == ["edited", "new", "same"]
    launch = resolve(services, "edited")
    assert isinstance(launch, ServiceLaunch) and "-VV" in launch.render().argv
    assert resolve(services, "gone") == Refusal("unsupported service")


def test_a_file_broken_on_reload_keeps_the_last_good_definition(runner_config: RunnerConfig,
                                                                log_lines: list[str]) -> None:
    defs = runner_config.service_defs_dir
    defs.mkdir()
    write(defs, "web", definition("-V"))
    services = directory_for(runner_config)
    write(defs, "web", '{"command": [')
    write(defs, "never", '{"command": 7}')
    summary = services.apply_definitions(services.read_definitions())
    assert (summary.loaded, summary.invalid, summary.kept, summary.removed) == (0, ("never", "web"), ("web",), ())
    assert isinstance(resolve(services, "web"), ServiceLaunch)
    never = resolve(services, "never")
    assert isinstance(never, Refusal) and "never" in never.reason
    assert any("keeping the previous one" in line and "web.json" in line for line in log_lines), log_lines
    assert any("service definition skipped" in line and "never.json" in line for line in log_lines), log_lines


def test_model_services_survive_a_reload(runner_config: RunnerConfig) -> None:
    # They came over the wire (start-model-service), not from the folder: a reread must not drop them.
    runner_config.service_defs_dir.mkdir()
    services = directory_for(runner_config)
    model = ModelInfo(name="m", model_path=str(runner_config.work_dir),
                      service=ModelServiceSpec(start_command=(sys.executable, "-V"), port=8000))
    assert not isinstance(services.plan_model_service(StartModelService(model=model)), Refusal | Preopened)
    summary = services.apply_definitions(services.read_definitions())
    assert (summary.loaded, summary.removed) == (0, ())
    assert [app["name"] for app in services.apps(None)] == ["m-8000"]
    assert isinstance(resolve(services, "m-8000"), ServiceLaunch)
