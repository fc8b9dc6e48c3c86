"""RunnerConfig: every path, port, timeout and restart default, loaded once from argv and files."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import attrs

from kernel_runner.generations import check_setting
from kernel_runner.supervision.policy import Backoff, IntensityLimit

DEFAULT_PORT_IN = 2000
DEFAULT_PORT_OUT = 2001
DEFAULT_SSHD_PORT = 2200
DEFAULT_TTYD_PORT = 7681
DEFAULT_TERM_IN_PORT = 2002
DEFAULT_TERM_OUT_PORT = 2003
HIGHEST_PORT = 65535


def _port(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not lowest <= value <= HIGHEST_PORT:
        raise argparse.ArgumentTypeError(f"{value} is not a port number ({lowest}-{HIGHEST_PORT})")
    return value


def port_number(text: str) -> int:
    """argparse type of a port to bind: 0-65535, 0 asking the OS for a free one.

    Checked at parse time: libzmq would otherwise bind something else than the log line says (issue 11).
    """
    return _port(text, 0)


def connect_port(text: str) -> int:
    """argparse type of a port to connect to: 1-65535."""
    return _port(text, 1)


def _valid_port(_instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    """Embedders build RunnerConfig without the command line: the same bounds as `port_number`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= HIGHEST_PORT):
        raise ValueError(f"{attribute.name} must be a port number 0-{HIGHEST_PORT} (0: any free port), got {value!r}")


@attrs.frozen(kw_only=True)
class RestartDefaults:
    """docs/architecture.md §4: 0.5 s × 2^n capped at 30 s, jitter 0.2, reset after a stable run; 5 restarts / 60 s."""

    backoff_initial_s: float = 0.5
    backoff_factor: float = 2.0
    backoff_cap_s: float = 30.0
    backoff_jitter: float = 0.2
    stable_after_s: float = 60.0
    intensity_max_restarts: int = 5
    intensity_period_s: float = 60.0

    def backoff(self, *, initial_s: float | None = None, cap_s: float | None = None) -> Backoff:
        """The runner's backoff; a child (or a service definition's `restart` block) may override start and cap."""
        return Backoff(
            initial_s=self.backoff_initial_s if initial_s is None else initial_s,
            factor=self.backoff_factor,
            cap_s=self.backoff_cap_s if cap_s is None else cap_s,
            jitter=self.backoff_jitter,
        )

    def intensity(self, *, max_restarts: int | None = None, period_s: float | None = None) -> IntensityLimit:
        return IntensityLimit(
            max_restarts=self.intensity_max_restarts if max_restarts is None else max_restarts,
            period_s=self.intensity_period_s if period_s is None else period_s,
        )


@attrs.frozen(kw_only=True)
class RunnerConfig:
    lang: str
    runtime_path: str | None = None
    debug: bool = False
    config_dir: Path = Path("/home/config")
    work_dir: Path = Path("/home/work")
    service_defs_dir: Path = Path("/etc/backend.ai/service-defs")
    bind: str = "*"
    # 0 asks the OS for a free port (tests and embedding); None means "from intrinsic-ports.json or the default".
    port_in: int | None = attrs.field(default=None, validator=_valid_port)
    port_out: int | None = attrs.field(default=None, validator=_valid_port)
    sshd_port: int | None = attrs.field(default=None, validator=_valid_port)
    ttyd_port: int | None = attrs.field(default=None, validator=_valid_port)
    term_in_port: int = attrs.field(default=DEFAULT_TERM_IN_PORT, validator=_valid_port)
    term_out_port: int = attrs.field(default=DEFAULT_TERM_OUT_PORT, validator=_valid_port)
    # Prometheus metrics over HTTP (docs/operations.md §5): off unless a port is given; this machine only by default.
    metrics_port: int | None = attrs.field(default=None, validator=_valid_port)
    metrics_bind: str = "127.0.0.1"
    user_input_socket: Path = Path("/tmp/bai-user-input.sock")
    # The operators' control socket (`kernel-runner ctl`, docs/operations.md §1); None: none. The command line
    # defaults it to control.protocol.configured_socket_path().
    control_socket: Path | None = None
    log_json: bool = False
    # One rotating log file per child under this folder (docs/operations.md §4); None: none are written.
    child_log_dir: Path | None = None
    child_log_rotation: str = "10 MB"  # loguru's rotation: a size ("10 MB") or a period ("1 day")
    child_log_retention: int = 5  # rotated files kept per child
    # "none" keeps runner logs off the agent's streams (docs/protocol.md §9.2 calls mixing them in upstream's worst habit).
    forward_logs: str = "none"
    start_intrinsic_services: bool = True
    # sshd and ttyd get a TCP liveness probe (docs/protocol.md §6.14); False: they are watched only for their exit.
    intrinsic_probes: bool = True
    dropbear_dir: Path = Path("/opt/kernel")
    # None: the first of the places agents mount ttyd (servicedefs.intrinsic.TTYD_PATHS, docs/protocol.md §6.11).
    ttyd_path: Path | None = None
    # Which Backend.AI agent drives this runner (docs/protocol.md §12): "auto" (decided from what the runner sees), a
    # row of generations.GENERATIONS, or any release. The command line reads KERNEL_RUNNER_AGENT_GENERATION too.
    agent_generation: str = attrs.field(default="auto", validator=lambda _i, _a, value: check_setting(value))
    # When `service-result` must be sent by; None: before the agent gives up, as its generation says (8 s or 30 s).
    service_launch_timeout_s: float | None = None
    # A service still opening its port after the reply keeps starting this long (from its spawn), then is killed.
    service_start_limit_s: float = 300.0
    service_stop_grace_s: float = 2.0
    shutdown_deadline_s: float = 15.0
    # Output in flight between producers and the agent socket: a chunk takes one credit per started 256 KiB
    # (outbox.credits_for), so 64 credits are at most 64 chunks and 16 MiB (docs/architecture.md §5.6).
    output_credits: int = 64
    outbox_limit: int = 4096
    restart: RestartDefaults = attrs.field(factory=RestartDefaults)
    # Model services (docs/protocol.md §7, docs/architecture.md §4). Startup probes run this often until the first
    # healthy answer, so the
    # `started` reply follows readiness within one period (upstream: one try per max_wait_time).
    model_startup_probe_period_s: float = 0.05
    # Liveness probe period when the model's health_check has no `interval` (Backend.AI 24.12+ default).
    model_probe_interval_s: float = 10.0
    # Send `model-service-status` transitions (the ≥23.09 agent's message). The 23.03 agent routes unknown types to
    # the current run's output queue or drops them, and never counts them as console output (docs/protocol.md §3.2-3.4).
    model_status_messages: bool = True
    # The next two apply to the verdict contract (agents before 23.09.1, docs/protocol.md §12.2); under the spawned
    # contract a model is never stopped or restarted for failing its checks, as upstream.
    # A model that never became healthy within its startup budget: stop its server (upstream left it running).
    model_stop_on_startup_failure: bool = True
    # After max_retries consecutive liveness failures: restart the server through the supervisor (upstream: report only).
    model_restart_on_unhealthy: bool = True

    # A folder the runner made for itself (for_embedding): removed with everything in it when the runner stops.
    temp_root: Path | None = None

    @classmethod
    def for_embedding(cls, lang: str, **overrides: Any) -> RunnerConfig:
        """A config that touches nothing outside one new temp folder: work, config and service-defs folders and the
        user-input and control sockets in it, no intrinsic services (sshd, ttyd), agent and terminal sockets on
        127.0.0.1 at free ports. The folder goes when the runner stops; `overrides` replace any field (a folder given there is
        used as it is, and not removed)."""
        root = Path(tempfile.mkdtemp(prefix="kernel-runner-embedded-"))
        folders = {"work_dir": root / "work", "config_dir": root / "config", "service_defs_dir": root / "service-defs"}
        for field, folder in folders.items():
            if field not in overrides:
                folder.mkdir()
        defaults: dict[str, Any] = {
            **folders,
            "user_input_socket": root / "user-input.sock",
            "control_socket": root / "control.sock",
            "bind": "127.0.0.1",
            "port_in": 0,
            "port_out": 0,
            "term_in_port": 0,
            "term_out_port": 0,
            "start_intrinsic_services": False,
            "temp_root": root,
        }
        return cls(lang=lang, **{**defaults, **overrides})

    @property
    def environ_file(self) -> Path:
        return self.config_dir / "environ.txt"

    @property
    def intrinsic_ports_file(self) -> Path:
        return self.config_dir / "intrinsic-ports.json"


class ConfigError(Exception):
    """A configuration file the runner cannot use; reported with the file name, never a traceback."""


def read_intrinsic_ports(path: Path) -> dict[str, int]:
    """docs/protocol.md §1.5: optional keys replin/replout/sshd/ttyd. Upstream aborts on bad JSON; we report and use defaults."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    ports: dict[str, int] = {}
    for key in ("replin", "replout", "sshd", "ttyd"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
            raise ConfigError(f"{path}: {key} must be a port number, got {value!r}")
        ports[key] = value
    return ports


def resolve_ports(config: RunnerConfig, file_ports: dict[str, int]) -> RunnerConfig:
    """Command-line ports win over intrinsic-ports.json, which wins over the defaults."""
    return attrs.evolve(
        config,
        port_in=config.port_in if config.port_in is not None else file_ports.get("replin", DEFAULT_PORT_IN),
        port_out=config.port_out if config.port_out is not None else file_ports.get("replout", DEFAULT_PORT_OUT),
        sshd_port=config.sshd_port if config.sshd_port is not None else file_ports.get("sshd", DEFAULT_SSHD_PORT),
        ttyd_port=config.ttyd_port if config.ttyd_port is not None else file_ports.get("ttyd", DEFAULT_TTYD_PORT),
    )
