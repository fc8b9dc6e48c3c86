"""The runner's supervision tree in one place, OTP's `init/1`: every child's id, factory, restart type, shutdown tier
and restart budget, and which query delegate each language uses.

The composition root (runtime/root.py) only wires: it makes the directory, the supervisor, the start-up gate and the
status board, and tells the supervisor the specs made here. Actor modules export their actor and its settings record;
no child spec is built anywhere else. A delegate's module, the service actor and the health checker are imported only
when their child is planned (docs/architecture.md §2.1).

    child             actor               restart     tier                 when
    router            RouterActor         permanent   FINAL_ANSWERS        always (gives up: the runner shuts down)
    lang              LangRunnerActor     permanent   PROCESSES_TOGETHER   always
    kernel            KernelActor         permanent   PROCESSES_TOGETHER   python, julia, r, vendor.h2o
    terminal          TerminalActor       permanent   BEFORE_LANG_RUNNER   git
    polly             PollyActor          permanent   BEFORE_LANG_RUNNER   vendor.aws_polly
    services          ServiceManagerActor       permanent   NO_NEW_STARTS        always
    service:<name>    ServiceActor        transient*  PROCESSES_TOGETHER   start-service, a model, intrinsic services
    health:<name>     HealthCheckerActor  transient   BEFORE_WATCHED       a watched model server (bound to it)

    * permanent for a model server and an intrinsic service; a definition's `restart` block may override it.

Who answers the agent for a model service depends on the agent generation's contract (docs/protocol.md §7.2, §12.2);
`model_child_specs` gives the request's answer to that child. The server's ServiceActor tells its checker (through
the child directory) when it is up and when its process ends.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pykka
from loguru import logger

from kernel_runner.actors.lang_runner.actor import LangRunnerActor, LangRunnerSettings
from kernel_runner.actors.router.actor import BoundPorts, RouterActor
from kernel_runner.actors.service_manager.actor import ServiceManagerActor, ServicePlanner
from kernel_runner.context import RunnerContext
from kernel_runner.generations import ModelReply
from kernel_runner.ids import (
    KERNEL_CHILD,
    LANG_CHILD,
    POLLY_CHILD,
    ROUTER_CHILD,
    SERVICES_CHILD,
    TERMINAL_CHILD,
    ChildId,
    health_child,
    service_child,
)
from kernel_runner.langs import POLLY_HANDLER, ExternalQuery, JupyterQuery, TerminalQuery, get_lang
from kernel_runner.messages import AgentEvent, HealthCheck, ModelInfo, ServiceAnswer
from kernel_runner.observability.debug_lines import log_at
from kernel_runner.servicedefs import RestartOverride, ServiceLaunch
from kernel_runner.supervision.policy import NO_FATAL_RETRY, Backoff, FatalRetry, RestartType
from kernel_runner.supervision.spec import ChildContext, ChildSpec
from kernel_runner.wire.answers import delegate_reject, lang_runner_reject, service_reject, services_reject
from kernel_runner.wire.status import StatusBoard

if TYPE_CHECKING:
    from kernel_runner.actors.health.actor import HealthPlan
    from kernel_runner.actors.kernel.actor import KernelSettings
    from kernel_runner.actors.polly.actor import PollyActorSettings
    from kernel_runner.actors.terminal.actor import TerminalPorts, TerminalSettings
    from kernel_runner.observability.metrics import RunnerMetrics


class Tier(enum.IntEnum):
    """Shutdown tiers: the highest stops first, the children of one tier stop together, all within one deadline."""

    FINAL_ANSWERS = 0
    """The router stops last, so every final answer still reaches the agent."""
    PROCESSES_TOGETHER = 1
    """The language runner, the Jupyter kernel and every service: their processes stop in parallel."""
    BEFORE_LANG_RUNNER = 2
    """The terminal and Polly: the language runner is still there to send the `finished` of a run they end."""
    BEFORE_WATCHED = 3
    """Health checkers stop before the servers they watch, so a stopping server is not reported unhealthy."""
    NO_NEW_STARTS = 4
    """The service manager stops first: no new service starts while the others stop."""


# A service that stays up this long counts as recovered: its next crash starts backoff from the beginning.
SERVICE_STABLE_AFTER_S = 3.0
HEALTH_SHUTDOWN_S = 1.0
KERNEL_SHUTDOWN_S = 3.0
KERNEL_STABLE_AFTER_S = 10.0


# ---- the children every runner has ----------------------------------------------------------------------------------


def first_children(
    runner: RunnerContext,
    *,
    ports: BoundPorts,
    board: StatusBoard,
    started_at: float,
    on_event: Callable[[AgentEvent], None],
    metrics: RunnerMetrics | None,
    planner: ServicePlanner,
    start_intrinsics: bool,
) -> list[ChildSpec]:
    """The router, the language runner and the service manager, in start order (the query delegate comes later,
    from `delegate_children`). The arguments are what the composition root made for them."""
    restart = runner.config.restart
    delegate = query_delegate(runner.config.lang)
    lang_settings = LangRunnerSettings(
        delegate=delegate.child_id if delegate is not None else None,
        completer=delegate.child_id if delegate is not None and delegate.completes else None,
    )

    def make_router(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return RouterActor.start(ctx=ctx, runner=runner, ports=ports, board=board, started_at=started_at,
                                 on_event=on_event, metrics=metrics)

    def make_lang(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return LangRunnerActor.start(ctx=ctx, runner=runner, settings=lang_settings)

    def make_services(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return ServiceManagerActor.start(ctx=ctx, runner=runner, planner=planner, start_intrinsics=start_intrinsics)

    return [
        ChildSpec(
            child_id=ROUTER_CHILD, factory=make_router, restart="permanent", on_give_up="shut_down_runner",
            tier=Tier.FINAL_ANSWERS, shutdown_s=1.0, backoff=Backoff(initial_s=0.05, cap_s=1.0, jitter=0.1),
            intensity=restart.intensity(),
        ),
        ChildSpec(
            child_id=LANG_CHILD, factory=make_lang, restart="permanent", tier=Tier.PROCESSES_TOGETHER, shutdown_s=3.0,
            backoff=restart.backoff(), intensity=restart.intensity(), reject=lang_runner_reject(),
        ),
        ChildSpec(
            child_id=SERVICES_CHILD, factory=make_services, restart="permanent", tier=Tier.NO_NEW_STARTS,
            shutdown_s=1.0, backoff=restart.backoff(initial_s=0.05), intensity=restart.intensity(),
            reject=services_reject(),
        ),
    ]


# ---- the language's query delegate ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class QueryDelegate:
    """The child a language's `code` goes to; `completes`: its `complete` requests go there too (else: no matches)."""

    child_id: ChildId
    completes: bool
    # Builds the child's spec; imports the actor's module, so only a language that has this delegate loads it.
    plan: Callable[[RunnerContext], ChildSpec]


def query_delegate(lang: str) -> QueryDelegate | None:
    """Which delegate the language uses, from its query mode: decided here only (the language runner's settings,
    `wait_ready` and the control socket all ask this), and known without importing the delegate's module."""
    query = get_lang(lang).query
    match query:
        case JupyterQuery():
            return QueryDelegate(child_id=KERNEL_CHILD, completes=True, plan=_plan_kernel)
        case TerminalQuery():
            return QueryDelegate(child_id=TERMINAL_CHILD, completes=False, plan=terminal_child_spec)
        case ExternalQuery() if query.handler == POLLY_HANDLER:  # docs/protocol.md §8.5
            return QueryDelegate(child_id=POLLY_CHILD, completes=False, plan=polly_child_spec)
    return None


def delegate_child_id(lang: str) -> ChildId | None:
    """Only the delegate's id: what `wait_ready` waits for, and what the control socket counts as a core child."""
    delegate = query_delegate(lang)
    return delegate.child_id if delegate is not None else None


def delegate_children(runner: RunnerContext) -> list[ChildSpec]:
    """The language's query delegate: the Jupyter kernel (python, julia, r, h2o), the pty terminal (git) or the
    Amazon Polly actor (vendor.aws_polly; boto3 is imported only once it makes a call); none for the others."""
    delegate = query_delegate(runner.config.lang)
    return [] if delegate is None else [delegate.plan(runner)]


def _plan_kernel(runner: RunnerContext) -> ChildSpec:
    """The kernel for the language's kernelspec: the table names one loosely ("python"), the installed one may be
    "python3" (docs/protocol.md §4.1). An unknown name still makes a kernel child: it fails with the list of installed
    kernelspecs, and queries get that reason."""
    from kernel_runner.actors.kernel.actor import KernelSettings
    from kernel_runner.actors.kernel.jupyter import kernelspec_names  # imports jupyter_client: only for this language

    query = get_lang(runner.config.lang).query
    assert isinstance(query, JupyterQuery)
    installed = kernelspec_names()
    picked = query.pick(installed)
    if picked is None:
        logger.bind(child=KERNEL_CHILD).error(
            "no kernelspec matches {!r}; installed: {}", query.kernelspec_name, ", ".join(installed) or "none"
        )
    return kernel_child_spec(runner, KernelSettings(kernel_name=picked or query.kernelspec_name))


def kernel_child_spec(runner: RunnerContext, settings: KernelSettings) -> ChildSpec:
    """The Jupyter kernel: permanent, restarted with backoff, FATAL after too many restarts (docs/architecture.md §4)."""
    from kernel_runner.actors.kernel.actor import KernelActor

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return KernelActor.start(ctx=ctx, runner=runner, settings=settings)

    return _delegate_spec(runner, KERNEL_CHILD, factory, what="the Jupyter kernel", tier=Tier.PROCESSES_TOGETHER,
                          shutdown_s=KERNEL_SHUTDOWN_S, stable_after_s=KERNEL_STABLE_AFTER_S)


def _delegate_spec(runner: RunnerContext, child_id: ChildId, factory: Callable[[ChildContext], pykka.ActorRef[Any]],
                   *, what: str, tier: Tier, shutdown_s: float, stable_after_s: float | None = None) -> ChildSpec:
    """A query delegate: permanent, with the runner's backoff and restart limit (and ChildSpec's stable run unless
    given); a run it cannot take is answered through the language runner (delegate_reject)."""
    restart = runner.config.restart
    spec = ChildSpec(child_id=child_id, factory=factory, restart="permanent", tier=tier, shutdown_s=shutdown_s,
                     backoff=restart.backoff(), intensity=restart.intensity(),
                     reject=delegate_reject(runner.directory, what=what))
    return spec if stable_after_s is None else attrs.evolve(spec, stable_after_s=stable_after_s)


def terminal_child_spec(runner: RunnerContext, settings: TerminalSettings | None = None, *,
                        ports: TerminalPorts | None = None) -> ChildSpec:
    """The git runner's terminal, permanent; its bound ports survive its restarts. `ports` lets a caller read the
    bound ports (also in `status` as term_in_port/term_out_port)."""
    from kernel_runner.actors.terminal.actor import TerminalActor, TerminalPorts, TerminalSettings

    config = runner.config
    bound = ports if ports is not None else TerminalPorts(config.term_in_port, config.term_out_port)
    chosen = settings if settings is not None else TerminalSettings()

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return TerminalActor.start(ctx=ctx, runner=runner, ports=bound, settings=chosen)

    return _delegate_spec(runner, TERMINAL_CHILD, factory, what="the terminal", tier=Tier.BEFORE_LANG_RUNNER,
                          shutdown_s=2.0)


def polly_child_spec(runner: RunnerContext, settings: PollyActorSettings | None = None) -> ChildSpec:
    """vendor.aws_polly's delegate, permanent (boto3 is imported only once it makes a call)."""
    from kernel_runner.actors.polly.actor import PollyActor, PollyActorSettings

    chosen = settings if settings is not None else PollyActorSettings()

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return PollyActor.start(ctx=ctx, runner=runner, settings=chosen)

    return _delegate_spec(runner, POLLY_CHILD, factory, what="the Amazon Polly worker", tier=Tier.BEFORE_LANG_RUNNER,
                          shutdown_s=1.0)


# ---- services and model services, started on the agent's request ---------------------------------------------------



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
    from kernel_runner.probes.plans import service_probe_plan

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
        probes=service_probe_plan(launch.probes, port=launch.port, cwd=launch.cwd, env=launch.prestart_env),
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
        tier=Tier.PROCESSES_TOGETHER,
        reject=service_reject(launch.name),
    )


def intrinsic_child_spec(launch: ServiceLaunch, runner: RunnerContext) -> ChildSpec:
    """sshd or ttyd, started by the runner itself: permanent, and nobody is waiting for a reply (an agent's later
    start-service for it is answered `running`)."""
    return service_child_spec(launch, runner, answer=None, default_restart="permanent")


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
        tier=Tier.BEFORE_WATCHED,
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


__all__ = [
    "QueryDelegate",
    "Tier",
    "delegate_child_id",
    "delegate_children",
    "first_children",
    "health_plan",
    "intrinsic_child_spec",
    "kernel_child_spec",
    "model_child_specs",
    "polly_child_spec",
    "query_delegate",
    "service_child_spec",
    "terminal_child_spec",
]
