"""A service definition's probes (servicedefs' ProbeDefinitions) made into what the engine runs, for one start."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kernel_runner.probes.kinds import ExecProbe, HttpProbe, Probe, TcpProbe
from kernel_runner.probes.service import ProbeSpec, ServiceProbePlan
from kernel_runner.servicedefs.schema import ProbeDefinition, ProbeDefinitions

# An HTTP probe waits at most this long to connect (to 127.0.0.1: a connection either comes at once or not at all);
# the rest of timeout_s is for the answer. The model checker uses the same rule (docs/protocol.md §7.2 step 4).
MAX_CONNECT_TIMEOUT_S = 1.0


def service_probe_plan(probes: ProbeDefinitions | None, *, port: int | None, cwd: Path,
                       env: Mapping[str, str]) -> ServiceProbePlan | None:
    """None when nothing is probed. `port` is the service's, for an http or tcp probe without its own (the catalog
    refused a start where neither exists); an exec probe runs in `cwd` with `env` (docs/protocol.md §6.14)."""
    if probes is None:
        return None
    def spec(definition: ProbeDefinition | None) -> ProbeSpec | None:
        return None if definition is None else _spec(definition, port=port, cwd=cwd, env=env)

    plan = ServiceProbePlan(startup=spec(probes.startup), liveness=spec(probes.liveness),
                            readiness=spec(probes.readiness))
    return plan if any(True for _ in plan.declared()) else None


def _spec(definition: ProbeDefinition, *, port: int | None, cwd: Path, env: Mapping[str, str]) -> ProbeSpec:
    return ProbeSpec(probe=_probe(definition, port=port, cwd=cwd, env=env), period_s=definition.period_s,
                     failure_threshold=definition.failure_threshold, success_threshold=definition.success_threshold,
                     initial_delay_s=definition.initial_delay_s)


def _probe(definition: ProbeDefinition, *, port: int | None, cwd: Path, env: Mapping[str, str]) -> Probe:
    timeout_s = definition.timeout_s
    if definition.http is not None:
        http = definition.http
        target = http.port or port
        assert target is not None
        return HttpProbe(url=f"http://127.0.0.1:{target}{http.path}", expected_status=http.expected_status,
                         connect_timeout_s=min(timeout_s, MAX_CONNECT_TIMEOUT_S), read_timeout_s=timeout_s)
    if definition.tcp is not None:
        target = definition.tcp.port or port
        assert target is not None
        return TcpProbe(port=target, timeout_s=timeout_s)
    assert definition.exec is not None
    return ExecProbe(argv=definition.exec.command, env=dict(env), cwd=cwd, timeout_s=timeout_s)


__all__ = ["MAX_CONNECT_TIMEOUT_S", "service_probe_plan"]
