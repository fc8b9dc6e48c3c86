"""SupervisorActor: owns every child's life (start, restart with backoff, give up, ordered stop) and answers status."""

from __future__ import annotations

import collections
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import pykka
from loguru import logger

from kernel_runner.actors.base import ChildContext, RouterLink
from kernel_runner.clock import Clock
from kernel_runner.config import RunnerConfig
from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    AppsResult,
    ChildExited,
    ChildInfo,
    ChildInfoUpdated,
    ChildState,
    ChildStateChanged,
    Crashed,
    ExitReason,
    ForwardToChild,
    GetApps,
    ModelServiceResult,
    RestartDue,
    ServiceResult,
    ShutdownService,
    ShutdownTree,
    StartFailed,
    StartModelService,
    StartService,
    StartupStepDone,
    StatusReply,
    StatusRequest,
    StopChild,
    StopRequested,
    ToAgent,
    Undelivered,
    WhichChildrenQuery,
)
from kernel_runner.policy import Backoff, Forget, GiveUp, IntensityLimit, Restart, RestartTracker, RestartType
from kernel_runner.timers import Ticker, TimerHandle

PENDING_FORWARD_LIMIT = 1000


@attrs.frozen(kw_only=True)
class ChildSpec:
    """How to (re)build one child: the factory gets a fresh context, with the generation number, per start."""

    child_id: ChildId
    factory: Callable[[ChildContext], pykka.ActorRef[Any]]
    restart: RestartType = "permanent"
    shutdown_s: float = 2.0
    # A significant child that gives up takes the runner down with it (OTP's `significant`): the router.
    significant: bool = False
    backoff: Backoff = attrs.field(factory=Backoff)
    intensity: IntensityLimit = attrs.field(factory=IntensityLimit)
    stable_after_s: float = 3.0
    # Higher tiers stop first; children of one tier stop together (router 0, language 1, services 2, probes 3).
    tier: int = 2
    # Answers for messages forwarded to this child when no incarnation can take them (gave up, or gone):
    # replies for the agent, or ForwardToChild messages (e.g. telling the language runner a delegated run is done).
    reject: Callable[[object], Sequence[ToAgent | ForwardToChild]] | None = None


class ServicePlanner(Protocol):
    """Turns service ops into child specs; the services issue supplies the real one."""

    def apps(self, name: str | None) -> AppsResult: ...

    def plan_service(self, request: StartService) -> ChildSpec | ServiceResult: ...

    def plan_model_service(self, request: StartModelService) -> Sequence[ChildSpec] | ModelServiceResult: ...

    def service_child_ids(self, name: str) -> Sequence[ChildId]: ...


class NoServices:
    """Planner for a runner without service support: every start is answered, none is spawned."""

    def apps(self, name: str | None) -> AppsResult:
        return AppsResult(apps=())

    def plan_service(self, request: StartService) -> ChildSpec | ServiceResult:
        return ServiceResult(status="failed", error="unsupported service")

    def plan_model_service(self, request: StartModelService) -> Sequence[ChildSpec] | ModelServiceResult:
        return ModelServiceResult(status="failed", error="model services are not supported by this runner")

    def service_child_ids(self, name: str) -> Sequence[ChildId]:
        return ()


class _Child:
    def __init__(self, spec: ChildSpec, order: int, rng: random.Random) -> None:
        self.spec = spec
        self.order = order
        self.tracker = RestartTracker(
            restart=spec.restart,
            backoff=spec.backoff,
            intensity=spec.intensity,
            stable_after_s=spec.stable_after_s,
            rng=rng,
        )
        self.ref: pykka.ActorRef[Any] | None = None
        self.generation = 0
        self.state = ChildState.STARTING
        self.pid: int | None = None
        self.started_at: float | None = None
        self.running_since: float | None = None
        self.last_exit: str | None = None
        self.extra: dict[str, Any] = {}
        self.timer: TimerHandle | None = None
        self.stop_permanently = False
        # StopChild(permanent=False): the stop was asked for, and a fresh incarnation is wanted afterwards.
        self.restart_after_stop = False
        self.pending: collections.deque[object] = collections.deque()

    def info(self, now: float) -> ChildInfo:
        uptime = now - self.running_since if self.running_since is not None and self.state is ChildState.RUNNING else None
        return ChildInfo(
            child_id=self.spec.child_id,
            state=self.state,
            pid=self.pid,
            restarts=self.tracker.total_restarts,
            generation=self.generation,
            last_exit=self.last_exit,
            uptime_s=uptime,
            extra=dict(self.extra),
        )


@attrs.frozen(kw_only=True)
class _ShutdownDeadline:
    pass


class SupervisorActor(pykka.ThreadingActor):
    """The only decider of restarts (R5); answers the agent's status from what children told it (no upward asks)."""

    def __init__(
        self,
        *,
        config: RunnerConfig,
        clock: Clock,
        ticker: Ticker,
        router_link: RouterLink,
        services: ServicePlanner | None = None,
        startup_steps: Sequence[str] = (),
        on_escalate: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
        child_env: Mapping[str, str] | None = None,
        runner_env: Mapping[str, str] | None = None,
        orphan_reject: Callable[[object], Sequence[ToAgent | ForwardToChild]] | None = None,
    ) -> None:
        super().__init__()
        self.log = logger.bind(child="supervisor")
        self._config = config
        self._clock = clock
        self._ticker = ticker
        self._router = router_link
        self._services: ServicePlanner = services or NoServices()
        self._pending_steps = set(startup_steps)
        self._deferred_status = 0
        self._on_escalate = on_escalate
        self._rng = rng or random.Random()
        self._children: dict[ChildId, _Child] = {}
        # Answers messages forwarded to a child that does not exist at all, so no run waits for ever.
        self._orphan_reject = orphan_reject
        self._child_env: Mapping[str, str] = child_env if child_env is not None else dict(os.environ)
        self._runner_env: Mapping[str, str] = runner_env if runner_env is not None else dict(os.environ)
        self._order = 0
        self.started_at = clock.monotonic()
        self._shutting_down = False
        self._shutdown_done: threading.Event | None = None
        self._shutdown_tier: int | None = None
        self._shutdown_timer: TimerHandle | None = None

    # ------------------------------------------------------------------------------------------
    def on_receive(self, message: object) -> object:
        try:
            return self._dispatch(message)
        except Exception as exc:  # noqa: BLE001 - a supervisor bug must not leave the tree unsupervised
            self.log.opt(exception=exc).error("error handling {}: {!r}", type(message).__name__, exc)
            return None

    def _dispatch(self, message: object) -> object:
        match message:
            case ChildExited():
                return self._handle_child_exited(message)
            case ChildStateChanged():
                return self._handle_child_state_changed(message)
            case ChildInfoUpdated():
                return self._handle_child_info_updated(message)
            case ForwardToChild():
                return self._handle_forward(message)
            case Undelivered():
                return self._handle_undelivered(message)
            case StatusRequest():
                return self._handle_status_request()
            case StartupStepDone():
                return self._handle_startup_step_done(message)
            case RestartDue():
                return self._handle_restart_due(message)
            case ChildSpec():
                return self._handle_start_child(message)
            case StopChild():
                return self._handle_stop_child(message)
            case StartService():
                return self._handle_start_service(message)
            case StartModelService():
                return self._handle_start_model_service(message)
            case ShutdownService():
                return self._handle_shutdown_service(message)
            case GetApps():
                return self._router.tell(self._services.apps(message.name))
            case WhichChildrenQuery():
                return self.which_children()
            case ShutdownTree():
                return self._handle_shutdown_tree(message)
            case _ShutdownDeadline():
                return self._handle_shutdown_deadline()
            case _:
                self.log.warning("ignored unexpected message {}", type(message).__name__)
                return None

    # ---- introspection ------------------------------------------------------------------------
    def which_children(self) -> list[ChildInfo]:
        now = self._clock.monotonic()
        return [child.info(now) for child in sorted(self._children.values(), key=lambda c: c.order)]

    def _handle_status_request(self) -> None:
        # spec §1.6 readiness rule: the agent reads the first status reply as "bootstrap has finished".
        if self._pending_steps:
            self._deferred_status += 1
            return
        self._send_status()

    def _send_status(self) -> None:
        children = tuple(self.which_children())
        self._router.tell(StatusReply(started_at=self.started_at, ready=not self._pending_steps, children=children))

    def _release_startup_steps(self, why: str) -> None:
        """A child that gave up may own a start-up step nobody will finish; the agent must not wait for ever (§3.1)."""
        if not self._pending_steps:
            return
        self.log.error("ready without finishing {} ({}); status is answered anyway", sorted(self._pending_steps), why)
        for step in sorted(self._pending_steps):
            self._handle_startup_step_done(StartupStepDone(step=step))

    def _handle_startup_step_done(self, message: StartupStepDone) -> None:
        self._pending_steps.discard(message.step)
        self.log.info("startup step done: {}", message.step)
        if not self._pending_steps:
            self.log.info("ready; answering {} deferred status request(s)", self._deferred_status)
            for _ in range(self._deferred_status):
                self._send_status()
            self._deferred_status = 0

    # ---- starting and restarting ---------------------------------------------------------------
    def _handle_start_child(self, spec: ChildSpec) -> None:
        if self._shutting_down:
            self.log.warning("shutting down; not starting {}", spec.child_id)
            return
        existing = self._children.get(spec.child_id)
        if existing is not None:
            self.log.warning("child {} exists already ({}); not started again", spec.child_id, existing.state.value)
            return
        self._order += 1
        child = _Child(spec, self._order, self._rng)
        self._children[spec.child_id] = child
        self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        child.generation += 1
        child.state = ChildState.STARTING
        child.pid = None
        child.extra = {}
        child.started_at = self._clock.monotonic()
        child.running_since = None
        ctx = ChildContext(
            child_id=child.spec.child_id,
            generation=child.generation,
            supervisor=self.actor_ref,
            router=self._router,
            config=self._config,
            clock=self._clock,
            ticker=self._ticker,
            env=self._child_env,
            runner_env=self._runner_env,
        )
        try:
            child.ref = child.spec.factory(ctx)
        except Exception as exc:  # noqa: BLE001 - a factory that raises is a failed start like any other
            self.log.opt(exception=exc).error("factory for {} failed: {!r}", child.spec.child_id, exc)
            child.ref = None
            self._child_ended(child, StartFailed(error=repr(exc)))
            return
        self.log.bind(child=child.spec.child_id).debug("started generation {}", child.generation)
        while child.pending:
            child.ref.tell(child.pending.popleft())

    def _handle_restart_due(self, message: RestartDue) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.generation != message.generation or child.state is not ChildState.BACKOFF:
            return
        child.timer = None
        if self._shutting_down:
            return
        self._spawn(child)

    # ---- child events ----------------------------------------------------------------------------
    def _current(self, child_id: ChildId, generation: int) -> _Child | None:
        child = self._children.get(child_id)
        if child is None or child.generation != generation:
            return None
        return child

    def _handle_child_state_changed(self, message: ChildStateChanged) -> None:
        child = self._current(message.child_id, message.generation)
        if child is None:
            return
        child.state = message.state
        if message.pid is not None:
            child.pid = message.pid
        if message.state is ChildState.RUNNING and child.running_since is None:
            child.running_since = self._clock.monotonic()

    def _handle_child_info_updated(self, message: ChildInfoUpdated) -> None:
        child = self._current(message.child_id, message.generation)
        if child is not None:
            child.extra.update(message.extra)

    def _handle_child_exited(self, message: ChildExited) -> None:
        child = self._current(message.child_id, message.generation)
        if child is None:
            self.log.debug("stale exit of {} generation {}", message.child_id, message.generation)
            return
        self._child_ended(child, message.reason)

    def _child_ended(self, child: _Child, reason: ExitReason) -> None:
        now = self._clock.monotonic()
        child_id = child.spec.child_id
        log = self.log.bind(child=child_id)
        uptime = now - child.running_since if child.running_since is not None else None
        child.ref = None
        child.pid = None
        child.last_exit = reason.describe()
        child.state = ChildState.EXITED
        if self._shutting_down:
            log.info("exited during shutdown: {}", reason.describe())
            self._reject_pending(child)
            del self._children[child_id]
            self._continue_shutdown()
            return
        if child.stop_permanently:
            log.info("exited: {}; stopped for good", reason.describe())
            self._forget(child)
            return
        if child.restart_after_stop:
            child.restart_after_stop = False
            # Counted like any restart, so a child restarted again and again still ends FATAL.
            reason = Crashed(error=f"restart requested ({reason.describe()})")
            child.last_exit = reason.describe()
        decision = child.tracker.decide(reason, now=now, uptime_s=uptime)
        match decision:
            case Forget():
                log.info("exited: {}; not restarted ({})", reason.describe(), decision.reason)
                self._forget(child)
            case GiveUp():
                child.state = ChildState.FATAL
                log.error("gave-up: {}", decision.reason)
                self._reject_pending(child)
                self._release_startup_steps(f"{child_id} gave up")
                if child.spec.significant:
                    self._escalate(f"{child_id} gave up: {decision.reason}")
            case Restart():
                child.state = ChildState.BACKOFF
                log.warning(
                    "exited: {}; restart-scheduled in {:.2f}s (attempt {})",
                    reason.describe(),
                    decision.delay_s,
                    decision.attempt + 1,
                )
                child.timer = self._ticker.schedule(
                    decision.delay_s, self.actor_ref, RestartDue(child_id=child_id, generation=child.generation)
                )

    def _forget(self, child: _Child) -> None:
        self._reject_pending(child)
        self._children.pop(child.spec.child_id, None)

    def _reject_pending(self, child: _Child) -> None:
        while child.pending:
            self._reject(child.spec, child.pending.popleft())

    def _reject(self, spec: ChildSpec | None, message: object) -> None:
        reject = spec.reject if spec is not None else self._orphan_reject
        replies = reject(message) if reject is not None else ()
        for reply in replies:
            if isinstance(reply, ForwardToChild):
                self._handle_forward(reply)
            else:
                self._router.tell(reply)
        if not replies:
            self.log.warning("no child to take {}; dropped", type(message).__name__)

    def _escalate(self, reason: str) -> None:
        self.log.critical("escalating: {}; the runner shuts down", reason)
        if self._on_escalate is not None:
            self._on_escalate(reason)

    # ---- routing --------------------------------------------------------------------------------
    def _handle_forward(self, message: ForwardToChild) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.state is ChildState.FATAL or self._shutting_down:
            self._reject(child.spec if child else None, message.message)
            return
        if child.ref is None or child.state is ChildState.BACKOFF:
            if len(child.pending) >= PENDING_FORWARD_LIMIT:
                self._reject(child.spec, message.message)
                return
            child.pending.append(message.message)
            return
        try:
            child.ref.tell(message.message)
        except pykka.ActorDeadError:
            child.pending.append(message.message)

    def _handle_undelivered(self, message: Undelivered) -> None:
        child = self._children.get(message.child_id)
        if child is not None and child.generation == message.generation and not self._shutting_down:
            # The incarnation that handed it back is ending: its exit decides (next incarnation, or reject).
            child.pending.append(message.message)
            return
        self._handle_forward(ForwardToChild(child_id=message.child_id, message=message.message))

    def _handle_stop_child(self, message: StopChild) -> None:
        child = self._children.get(message.child_id)
        if child is None:
            return
        log = self.log.bind(child=message.child_id)
        child.stop_permanently = child.stop_permanently or message.permanent
        child.restart_after_stop = not child.stop_permanently
        if child.ref is None:
            if child.timer is not None:
                child.timer.cancel()
            log.info("stopped ({}) while {}", message.reason, child.state.value)
            if message.permanent:
                self._forget(child)
            return
        child.state = ChildState.STOPPING
        log.info("stopping: {}", message.reason)
        self._tell_child(child, StopRequested(reason=message.reason, grace_s=child.spec.shutdown_s))

    def _tell_child(self, child: _Child, message: object) -> None:
        """A child may have died a moment ago; its ChildExited is then already on its way to us."""
        if child.ref is None:
            return
        try:
            child.ref.tell(message)
        except pykka.ActorDeadError:
            self.log.bind(child=child.spec.child_id).debug("already gone; {} not delivered", type(message).__name__)

    # ---- services ---------------------------------------------------------------------------------
    def _handle_start_service(self, message: StartService) -> None:
        if message.info.protocol != "preopen":
            for child_id in self._services.service_child_ids(message.info.name):
                child = self._children.get(child_id)
                if child is not None and child.state is not ChildState.FATAL and not child.stop_permanently:
                    # spec §6.2 step 2: keyed by name; a second start with other options is not applied.
                    self._router.tell(ServiceResult(status="running"))
                    return
                if child is not None:
                    self._children.pop(child_id, None)
        plan = self._services.plan_service(message)
        if isinstance(plan, ServiceResult):
            self._router.tell(plan)
            return
        self._handle_start_child(plan)

    def _handle_start_model_service(self, message: StartModelService) -> None:
        plan = self._services.plan_model_service(message)
        if isinstance(plan, ModelServiceResult):
            self._router.tell(plan)
            return
        for spec in plan:
            existing = self._children.get(spec.child_id)
            if existing is not None and existing.state is ChildState.FATAL:
                self._children.pop(spec.child_id, None)
            elif existing is not None:
                self._router.tell(ModelServiceResult(status="running"))
                return
        for spec in plan:
            self._handle_start_child(spec)

    def _handle_shutdown_service(self, message: ShutdownService) -> None:
        ids = [child_id for child_id in self._services.service_child_ids(message.name) if child_id in self._children]
        if not ids:
            self.log.info("shutdown-service {!r}: no such service running", message.name)
        for child_id in ids:
            self._handle_stop_child(StopChild(child_id=child_id, reason="shutdown-service", permanent=True))

    # ---- orderly shutdown ----------------------------------------------------------------------------
    def _handle_shutdown_tree(self, message: ShutdownTree) -> threading.Event:
        if self._shutdown_done is None:
            self._shutdown_done = threading.Event()
        if self._shutting_down:
            return self._shutdown_done
        self._shutting_down = True
        self.log.info("shutting down {} child(ren) within {:.1f}s", len(self._children), message.grace_s)
        self._shutdown_timer = self._ticker.schedule(message.grace_s, self.actor_ref, _ShutdownDeadline())
        for child in list(self._children.values()):
            if child.ref is None:
                if child.timer is not None:
                    child.timer.cancel()
                self._reject_pending(child)
                del self._children[child.spec.child_id]
        self._continue_shutdown()
        return self._shutdown_done

    def _continue_shutdown(self) -> None:
        if not self._shutting_down or self._shutdown_done is None:
            return
        if not self._children:
            self._shutdown_complete()
            return
        top = max(child.spec.tier for child in self._children.values())
        if self._shutdown_tier == top:
            return
        self._shutdown_tier = top
        for child in self._children.values():
            if child.spec.tier == top and child.ref is not None:
                child.state = ChildState.STOPPING
                self._tell_child(child, StopRequested(reason="runner shutdown", grace_s=child.spec.shutdown_s))

    def _handle_shutdown_deadline(self) -> None:
        if self._shutdown_done is None or self._shutdown_done.is_set():
            return
        stuck = [child.spec.child_id for child in self._children.values()]
        self.log.error("shutdown deadline passed; forcing stop of {}", ", ".join(stuck))
        for child in list(self._children.values()):
            if child.ref is not None:
                child.ref.stop(block=False)
        self._children.clear()
        self._shutdown_complete()

    def _shutdown_complete(self) -> None:
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        self.log.info("all children stopped")
        if self._shutdown_done is not None:
            self._shutdown_done.set()
