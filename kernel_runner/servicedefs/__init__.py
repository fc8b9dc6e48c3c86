"""Service definitions as data: schema, loader, templates, prestart actions, legacy and intrinsic services.

See docs/protocol.md §6.
"""

from __future__ import annotations

from kernel_runner.servicedefs.catalog import (
    UNSUPPORTED,
    BrokenDefinition,
    Preopened,
    Refusal,
    ServiceCatalog,
    ServiceCommand,
    ServiceLaunch,
    load_service_definitions,
    model_service_definition,
)
from kernel_runner.servicedefs.errors import DefinitionError, ServiceStartError, SshdSetupError, TemplateError
from kernel_runner.servicedefs.intrinsic import (
    IntrinsicLauncher,
    Intrinsics,
    SshdSetupPlan,
    apply_sshd_setup,
    intrinsic_launchers,
    plan_sshd_setup,
)
from kernel_runner.servicedefs.legacy import LegacyRow, LegacyTable, bundled_legacy
from kernel_runner.servicedefs.prestart import PrestartLog, run_prestart
from kernel_runner.servicedefs.schema import PrestartAction, RestartOverride, ServiceDefinition, parse_definition
from kernel_runner.servicedefs.template import interpolate

__all__ = [
    "UNSUPPORTED",
    "BrokenDefinition",
    "DefinitionError",
    "IntrinsicLauncher",
    "Intrinsics",
    "LegacyRow",
    "LegacyTable",
    "Preopened",
    "PrestartAction",
    "PrestartLog",
    "Refusal",
    "RestartOverride",
    "ServiceCatalog",
    "ServiceCommand",
    "ServiceDefinition",
    "ServiceLaunch",
    "ServiceStartError",
    "SshdSetupError",
    "SshdSetupPlan",
    "TemplateError",
    "apply_sshd_setup",
    "bundled_legacy",
    "interpolate",
    "intrinsic_launchers",
    "load_service_definitions",
    "model_service_definition",
    "parse_definition",
    "plan_sshd_setup",
    "run_prestart",
]
