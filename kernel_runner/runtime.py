"""The composition root: builds the actor tree for one RunnerConfig, and the handle that embeds or stops it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import pykka
from loguru import logger

from kernel_runner.actors.base import ChildContext, RouterLink
from kernel_runner.actors.kernel import kernel_child_spec
from kernel_runner.actors.lang_runner import LangRunnerActor, reject_delegated_run, reject_run
from kernel_runner.actors.router import BoundPorts, RouterActor
from kernel_runner.actors.terminal import terminal_child_spec
from kernel_runner.childenv import build_child_env
from kernel_runner.clock import REAL_CLOCK, Clock
from kernel_runner.config import RunnerConfig, resolve_ports
from kernel_runner.ids import LANG_CHILD, ROUTER_CHILD
from kernel_runner.jupyter import kernelspec_names
from kernel_runner.langs import JupyterQuery, TerminalQuery, get_lang, resolve_runtime
from kernel_runner.logs import add_agent_log_sink
from kernel_runner.messages import (
    ChildInfo,
    LogRecord,
    Output,
    ServiceInfo,
    ServiceResult,
    ShutdownTree,
    StartupStepDone,
    WhichChildrenQuery,
)
from kernel_runner.policy import Backoff
from kernel_runner.servicedefs import (
    SshdSetupError,
    apply_sshd_setup,
    intrinsic_launchers,
    load_service_definitions,
    plan_sshd_setup,
)
from kernel_runner.services import ServiceDirectory, service_child_spec
from kernel_runner.supervisor import ChildSpec, ServicePlanner, SupervisorActor
from kernel_runner.timers import Ticker

ASK_TIMEOUT_S = 2.0


class RunnerHandle:
    """A running actor tree: its bound ports, introspection, and an orderly bounded stop."""

    def __init__(
        self,
        *,
        config: RunnerConfig,
        ports: BoundPorts,
        supervisor: pykka.ActorRef[SupervisorActor],
        ticker: Ticker,
        link: RouterLink,
        escalated: threading.Event,
    ) -> None:
        self.config = config
        self.ports = ports
        self.supervisor = supervisor
        self._ticker = ticker
        self._link = link
        self.escalated = escalated
        self.escalation_reason: str | None = None
        self.log_sink_id: int | None = None
        self._stopped = False

    @property
    def router_link(self) -> RouterLink:
        """Where in-process producers (pumps, embedders) send output, with the runner's backpressure."""
        return self._link

    def which_children(self, timeout: float = ASK_TIMEOUT_S) -> list[ChildInfo]:
        return cast(list[ChildInfo], self.supervisor.ask(WhichChildrenQuery(), timeout=timeout))

    def tell(self, message: object) -> None:
        self.supervisor.tell(message)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop children in tier order within one deadline; True when everything stopped in time."""
        if self._stopped:
            return True
        self._stopped = True
        if self.log_sink_id is not None:
            logger.remove(self.log_sink_id)
        deadline_s = timeout if timeout is not None else self.config.shutdown_deadline_s
        clean = True
        try:
            done = cast(threading.Event, self.supervisor.ask(ShutdownTree(grace_s=deadline_s), timeout=ASK_TIMEOUT_S))
            clean = done.wait(timeout=deadline_s + 1.0)
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            logger.bind(child="runner").error("supervisor did not take the shutdown request: {!r}", exc)
            clean = False
        self._link.closed.set()
        try:
            self.supervisor.stop(block=True, timeout=ASK_TIMEOUT_S)
        except (pykka.Timeout, pykka.ActorDeadError):
            clean = False
        self._ticker.stop()
        return clean


def start(
    config: RunnerConfig,
    *,
    services: ServicePlanner | None = None,
    extra_children: Sequence[ChildSpec] = (),
    startup_steps: Sequence[str] = ("bootstrap",),
    clock: Clock = REAL_CLOCK,
    file_ports: dict[str, int] | None = None,
) -> RunnerHandle:
    """Start the whole tree in this process (the CLI and test harnesses both come through here)."""
    config = resolve_ports(config, file_ports or {})
    assert config.port_in is not None and config.port_out is not None
    child_env, runner_env = build_environments(config)
    directory: ServiceDirectory | None = None
    if services is None:
        directory = build_service_directory(config, child_env)
        services = directory
    start_intrinsics = directory is not None and config.start_intrinsic_services
    if start_intrinsics:
        startup_steps = (*startup_steps, INTRINSIC_STEP)
    ticker = Ticker(clock)
    link = RouterLink(config.output_credits)
    escalated = threading.Event()
    handle_box: list[RunnerHandle] = []

    def on_escalate(reason: str) -> None:
        if handle_box:
            handle_box[0].escalation_reason = reason
        escalated.set()

    supervisor = SupervisorActor.start(
        config=config,
        clock=clock,
        ticker=ticker,
        router_link=link,
        services=services,
        startup_steps=startup_steps,
        on_escalate=on_escalate,
        child_env=child_env,
        runner_env=runner_env,
        orphan_reject=reject_delegated_run,
    )
    ports = BoundPorts(config.port_in, config.port_out)

    def make_router(ctx: ChildContext) -> pykka.ActorRef[Any]:
        ref = RouterActor.start(ctx=ctx, ports=ports)
        link.attach(ref)
        return ref

    def make_lang(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return LangRunnerActor.start(ctx=ctx, lang=config.lang)

    backoff = config.restart.backoff()
    intensity = config.restart.intensity()
    specs: list[ChildSpec] = [
        ChildSpec(
            child_id=ROUTER_CHILD,
            factory=make_router,
            restart="permanent",
            significant=True,
            tier=0,
            shutdown_s=1.0,
            backoff=Backoff(initial_s=0.05, cap_s=1.0, jitter=0.1),
            intensity=intensity,
        ),
        ChildSpec(
            child_id=LANG_CHILD,
            factory=make_lang,
            restart="permanent",
            tier=1,
            shutdown_s=3.0,
            backoff=backoff,
            intensity=intensity,
            reject=reject_run,
        ),
        # A harness may pass its own child under a default delegate's id (e.g. a stand-in "kernel"): it wins.
        *(spec for spec in delegate_children(config) if spec.child_id not in {c.child_id for c in extra_children}),
        *extra_children,
    ]
    for spec in specs:
        supervisor.tell(spec)
    if start_intrinsics:
        assert directory is not None
        threading.Thread(
            target=start_intrinsic_services,
            args=(config, directory, supervisor, child_env, runner_env),
            name="IntrinsicStarter",
            daemon=True,
        ).start()
    handle = RunnerHandle(config=config, ports=ports, supervisor=supervisor, ticker=ticker, link=link, escalated=escalated)
    if config.forward_logs != "none":
        handle.log_sink_id = add_agent_log_sink(
            _log_sender(link, config.forward_logs), prefix=get_lang(config.lang).log_prefix
        )
    handle_box.append(handle)
    # The router binds in its on_start; wait (bounded) so the handle reports the real ports, or fails loudly.
    if not ports.bound.wait(timeout=10.0) or ports.error is not None:
        handle.stop(timeout=2.0)
        raise RunnerStartError(ports.error or "the router did not bind its sockets within 10 s")
    return handle


def build_environments(config: RunnerConfig) -> tuple[dict[str, str], dict[str, str]]:
    """The child env (spec §1.4) and the runner env (os.environ + environ.txt), computed once at start."""
    log = logger.bind(child="runner")
    built = build_child_env(
        base_environ=os.environ, lang=get_lang(config.lang), environ_file=config.environ_file, home=str(config.work_dir)
    )
    for problem in built.problems:
        log.warning("{}", problem)
    # Upstream writes environ.txt into its own os.environ; we keep our process environment untouched and hand the
    # combination to the children that upstream gives os.environ (the Jupyter kernel, the terminal shell).
    runner_env = {**os.environ, **built.runner_env_additions}
    return dict(built.env), runner_env


def delegate_children(config: RunnerConfig) -> list[ChildSpec]:
    """The language's query delegate: the Jupyter kernel (python, julia, r, h2o) or the pty terminal (git)."""
    query = get_lang(config.lang).query
    if isinstance(query, TerminalQuery):
        return [terminal_child_spec(config)]
    if isinstance(query, JupyterQuery):
        # The table names a kernelspec loosely ("python"); the installed one may be "python3" (spec §4.1). An unknown
        # name still makes a kernel child: it fails with the list of installed kernelspecs, and queries get that reason.
        installed = kernelspec_names()
        picked = query.pick(installed)
        if picked is None:
            logger.bind(child="kernel").error(
                "no kernelspec matches {!r}; installed: {}", query.kernelspec_name, ", ".join(installed) or "none"
            )
        return [kernel_child_spec(config, kernel_name=picked or query.kernelspec_name)]
    return []


def _log_sender(link: RouterLink, mode: str) -> Callable[[str], None]:
    """`log` is the agent's console type for runner lines; `stderr` is upstream's (mixed into user output)."""
    if mode == "stderr":
        return lambda text: link.tell(Output(stream="stderr", data=text.encode("utf-8", errors="replace")))
    return lambda text: link.tell(LogRecord(text=text))


def build_service_directory(config: RunnerConfig, child_env: dict[str, str]) -> ServiceDirectory:
    """Load the service definitions once; a broken file is logged with its JSON path and skipped (spec §10.2.11)."""
    log = logger.bind(child="services")
    runtime_path = resolve_runtime(get_lang(config.lang), config.runtime_path)
    catalog, problems = load_service_definitions(config.service_defs_dir, variables={"runtime_path": str(runtime_path)})
    for problem in problems:
        log.error("service definition skipped: {}", problem)
    intrinsics = intrinsic_launchers(config)
    for warning in intrinsics.warnings:
        (log.warning if config.start_intrinsic_services else log.debug)("{}", warning)
    return ServiceDirectory(
        config=config, catalog=catalog, intrinsics=intrinsics, child_env=child_env, runtime_path=runtime_path
    )


INTRINSIC_STEP = "intrinsic-services"
INTRINSIC_PORTS = (("sshd", "sshd_port"), ("ttyd", "ttyd_port"))


def start_intrinsic_services(
    config: RunnerConfig,
    directory: ServiceDirectory,
    supervisor: pykka.ActorRef[SupervisorActor],
    child_env: dict[str, str],
    runner_env: dict[str, str],
) -> None:
    """sshd keys, then sshd and ttyd as supervised children (spec §1.6 B.5); runs in its own thread (blocking I/O)."""
    log = logger.bind(child="intrinsic")
    try:
        if directory.has_intrinsic("sshd"):
            plan = plan_sshd_setup(config, environ=runner_env)
            try:
                for warning in apply_sshd_setup(plan, env=child_env):
                    log.warning("{}", warning)
            except SshdSetupError as exc:
                log.error("{}; sshd may refuse logins", exc)
        for name, attr in INTRINSIC_PORTS:
            port = getattr(config, attr)
            if not directory.has_intrinsic(name) or port is None:
                continue
            launch = directory.resolve(ServiceInfo(name=name, port=port, ports=(port,), protocol="tcp"))
            if isinstance(launch, ServiceResult):
                log.error("{} cannot start: {}", name, launch.error)
                continue
            # Nobody asked, so nobody gets a reply; an agent's later start-service for it is answered `running`.
            supervisor.tell(service_child_spec(launch, config, reply="none", default_restart="permanent"))
    except Exception as exc:  # noqa: BLE001 - a failed intrinsic start must not keep the runner from getting ready
        log.opt(exception=exc).error("error during starting intrinsic services: {!r}", exc)
    finally:
        try:
            supervisor.tell(StartupStepDone(step=INTRINSIC_STEP))
        except pykka.ActorDeadError:
            pass


class RunnerStartError(RuntimeError):
    """The tree could not come up (for example the agent ports are taken)."""


__all__ = ["RunnerHandle", "RunnerStartError", "start"]
