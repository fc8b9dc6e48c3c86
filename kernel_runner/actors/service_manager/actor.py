"""ServiceManagerActor: the service manager. Turns start-service, shutdown-service, get-apps and start-model-service into
requests to the supervisor, and answers the request where the planner's or the supervisor's answer decides it.

It plans (through a ServicePlanner) and asks; the supervisor starts and stops. A start of something that runs already
is an answer, not an error: the supervisor says AlreadyStarted and the agent hears `running` (docs/protocol.md §6.2).
Every answer goes through the request's own (messages.ServiceAnswer, built in wire/answers.py).

    StartService ──plan──▶ specs ──StartChild(first, reply_to=me)──▶ Started ──▶ StartChild(rest); the
        │                                                            │           ServiceActor answers the agent
        ├─▶ Refusal (unsupported, broken definition) ──▶ `failed`    ├─ AlreadyStarted ──▶ `running`
        └─▶ Preopened ──▶ `started`                                  └─ StartRefused ──▶ `failed`, with the reason
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from kernel_runner.context import RunnerContext
from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    AwaitServiceStart,
    GetApps,
    ReloadServiceDefinitions,
    ServiceAnswer,
    ServiceDefinitionsReloaded,
    ShutdownService,
    StartModelService,
    StartService,
)
from kernel_runner.servicedefs import Preopened, Refusal, ServiceCatalog
from kernel_runner.supervision.actor import SupervisedActor
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.spec import (
    AlreadyStarted,
    ChildContext,
    ChildSpec,
    ChildState,
    StartChild,
    Started,
    StartRefused,
    StopChild,
)

INTRINSIC_STEP = "intrinsic-services"  # the start-up step `status` waits for (docs/protocol.md §1.6)


class ServicePlanner(Protocol):
    """Decides what to start for a service op; runtime.service_planner.DefinitionPlanner is the runner's, tests bring
    their own. A plan's children carry the request's answer where they give it (the service, a model's checker)."""

    def apps(self, name: str | None) -> Sequence[Mapping[str, Any]]: ...

    def plan_service(self, request: StartService) -> Sequence[ChildSpec] | Refusal | Preopened: ...

    def plan_model_service(self, request: StartModelService) -> Sequence[ChildSpec] | Refusal | Preopened: ...

    def service_child_ids(self, name: str) -> Sequence[ChildId]: ...

    def intrinsic_specs(self) -> Sequence[ChildSpec]: ...


@attrs.frozen(kw_only=True)
class LoadedDefinitions:
    """One read of the service-defs folder: the catalog it makes and one line per problem."""

    catalog: ServiceCatalog
    problems: tuple[str, ...]


@runtime_checkable
class DefinitionsReloader(Protocol):
    """A planner whose services come from the service-defs folder (services.DefinitionPlanner): it can reread it."""

    def read_definitions(self) -> LoadedDefinitions: ...

    def apply_definitions(self, loaded: LoadedDefinitions) -> ServiceDefinitionsReloaded: ...


@attrs.frozen(kw_only=True)
class _DefinitionsRead:
    loaded: LoadedDefinitions | None  # None: the reread failed (logged), the old definitions stay
    requests: tuple[ReloadServiceDefinitions, ...]


@attrs.frozen(kw_only=True)
class _PendingStart:
    """A start whose answer depends on the supervisor's answer."""

    rest: tuple[ChildSpec, ...]
    answer: ServiceAnswer
    # A start-service (not a model's): one for a service still starting waits for that start (AwaitServiceStart).
    awaits_start: bool = False
    # A helper (a checker) started after its server: an old one still running would answer nobody, so that start
    # fails and takes its server down with it.
    helper_of: ChildId | None = None


@attrs.frozen(kw_only=True)
class _IntrinsicsPlanned:
    specs: tuple[ChildSpec, ...]


class ServiceManagerActor(SupervisedActor):
    """Owns the service ops; holds no processes itself (each service is a ServiceActor the supervisor starts)."""

    redeliverable = (StartService, StartModelService, GetApps, ShutdownService, ReloadServiceDefinitions)

    def __init__(self, *, ctx: ChildContext, runner: RunnerContext, planner: ServicePlanner,
                 start_intrinsics: bool = False) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self._planner = planner
        self._start_intrinsics = start_intrinsics
        # The supervisor answers StartChild in order, so each child id's pending starts form a queue.
        self._pending: dict[ChildId, collections.deque[_PendingStart]] = {}
        # One reread at a time, so an older read never replaces a newer one; requests meanwhile share the next read.
        self._reading = False
        self._reloads_waiting: list[ReloadServiceDefinitions] = []

    def start_child(self) -> None:
        self.set_state(ChildState.RUNNING)
        if self._start_intrinsics and self.generation == 1:
            threading.Thread(target=self._plan_intrinsics, name="IntrinsicServices", daemon=True).start()

    def _plan_intrinsics(self) -> None:
        """sshd key setup is blocking file and process I/O: it runs here, never on the actor's thread."""
        specs: Sequence[ChildSpec] = ()
        try:
            specs = self._planner.intrinsic_specs()
        except Exception as exc:  # noqa: BLE001 - a failed intrinsic start must not keep the runner from getting ready
            self.log.opt(exception=exc).error("error while preparing the intrinsic services: {!r}", exc)
        if not tell_if_alive(self.actor_ref, _IntrinsicsPlanned(specs=tuple(specs))):
            self._runner.gate.done(INTRINSIC_STEP)

    def handle(self, message: object) -> object:
        match message:
            case StartService():
                return self._handle_start_service(message)
            case StartModelService():
                return self._handle_start_model_service(message)
            case ShutdownService():
                return self._handle_shutdown_service(message)
            case GetApps():
                return message.answer.send(tuple(self._planner.apps(message.name)))
            case Started() | AlreadyStarted() | StartRefused():
                return self._handle_start_answer(message)
            case _IntrinsicsPlanned():
                return self._handle_intrinsics_planned(message)
            case ReloadServiceDefinitions():
                return self._handle_reload(message)
            case _DefinitionsRead():
                return self._handle_definitions_read(message)
            case _:
                return super().handle(message)

    def _handle_start_service(self, message: StartService) -> None:
        self._start(self._planner.plan_service(message), message.answer, awaits_start=True)

    def _handle_start_model_service(self, message: StartModelService) -> None:
        self._start(self._planner.plan_model_service(message), message.answer)

    def _start(self, plan: Sequence[ChildSpec] | Refusal | Preopened, answer: ServiceAnswer, *,
               awaits_start: bool = False) -> None:
        match plan:
            case Refusal():
                answer.send("failed", plan.reason)
                return
            case Preopened():
                answer.send("started")
                return
        first, *rest = plan
        for helper in rest:
            # The first child may tell its helper something before the helper is started (a server that cannot
            # even spawn tells its checker at once): the directory holds it for the helper instead of dropping it.
            self.ctx.directory.register(helper.child_id, helper.reject)
        self._pending.setdefault(first.child_id, collections.deque()).append(
            _PendingStart(rest=tuple(rest), answer=answer, awaits_start=awaits_start)
        )
        self.ctx.supervisor.tell(StartChild(spec=first, reply_to=self.actor_ref))

    def _handle_start_answer(self, answer: Started | AlreadyStarted | StartRefused) -> None:
        queue = self._pending.get(answer.child_id)
        if not queue:
            return
        pending = queue.popleft()
        if not queue:
            del self._pending[answer.child_id]
        match answer:
            case Started():
                if pending.answer.at_child_start:  # an operator's start is answered here; the child answers nobody
                    pending.answer.send("started")
                # The first child answers the agent itself (started/failed); the rest are its helpers (a checker).
                for spec in pending.rest:
                    helper = _PendingStart(rest=(), answer=pending.answer, helper_of=answer.child_id)
                    self._pending.setdefault(spec.child_id, collections.deque()).append(helper)
                    self.ctx.supervisor.tell(StartChild(spec=spec, reply_to=self.actor_ref))
            case AlreadyStarted() if answer.state is ChildState.STARTING and pending.awaits_start:
                # Still opening its port (maybe past an earlier reply's deadline): this start is answered when it is up,
                # with the same process (docs/protocol.md §6.2 step 2).
                self.ctx.directory.tell(answer.child_id, AwaitServiceStart(
                    answer=pending.answer, within_s=self._runner.service_reply_within_s()))
            case AlreadyStarted() if pending.helper_of is None:
                self.log.info("{} is {} already; answered `running`", answer.child_id, answer.state.value)
                pending.answer.send("running")
            case _:
                reason = answer.reason if isinstance(answer, StartRefused) else (
                    f"{answer.child_id} from an earlier start is still {answer.state.value}; try again")
                self.log.error("{} was not started: {}", answer.child_id, reason)
                pending.answer.send("failed", reason)
                if pending.helper_of is not None:
                    self.ctx.supervisor.tell(StopChild(child_id=pending.helper_of, reason=f"its helper failed: {reason}"))

    def _handle_shutdown_service(self, message: ShutdownService) -> None:
        for child_id in self._planner.service_child_ids(message.name):
            # The agent asked: the service stays as a STOPPED row, as after `kernel-runner ctl stop`.
            self.ctx.supervisor.tell(StopChild(child_id=child_id, reason="shutdown-service", keep_row=True))

    def _handle_intrinsics_planned(self, message: _IntrinsicsPlanned) -> None:
        for spec in message.specs:
            self.ctx.supervisor.tell(StartChild(spec=spec))
        self._runner.gate.done(INTRINSIC_STEP)

    def _handle_reload(self, message: ReloadServiceDefinitions) -> None:
        if not isinstance(self._planner, DefinitionsReloader):
            self.log.warning("nothing to reload: this runner's services do not come from a service-defs folder")
            return
        self._reloads_waiting.append(message)
        if not self._reading:
            self._start_read(self._planner)

    def _start_read(self, planner: DefinitionsReloader) -> None:
        """Reading the folder is blocking file I/O: a helper thread reads, this actor swaps the catalog."""
        requests, self._reloads_waiting = tuple(self._reloads_waiting), []
        self._reading = True
        threading.Thread(target=self._read_definitions, args=(planner, requests), name="ReloadServiceDefinitions",
                         daemon=True).start()

    def _read_definitions(self, planner: DefinitionsReloader, requests: tuple[ReloadServiceDefinitions, ...]) -> None:
        loaded: LoadedDefinitions | None = None
        try:
            loaded = planner.read_definitions()
        except Exception as exc:  # noqa: BLE001 - a bug in the reread must leave the old definitions in place
            self.log.opt(exception=exc).error("cannot reread the service definitions: {!r}", exc)
        tell_if_alive(self.actor_ref, _DefinitionsRead(loaded=loaded, requests=requests))

    def _handle_definitions_read(self, message: _DefinitionsRead) -> None:
        assert isinstance(self._planner, DefinitionsReloader)
        self._reading = False
        if self._reloads_waiting:
            self._start_read(self._planner)
        if message.loaded is None:
            return
        summary = self._planner.apply_definitions(message.loaded)
        kept = f" (kept the previous definition of {_listed(summary.kept)})" if summary.kept else ""
        self.log.info(
            "reloaded service definitions: {} loaded, added {}, changed {}, removed {}, {} invalid{}; running services"
            " are not restarted (a changed definition applies to the next start-service)",
            summary.loaded, _listed(summary.added), _listed(summary.changed), _listed(summary.removed),
            len(summary.invalid), kept,
        )
        for request in message.requests:
            if request.reply is not None:
                request.reply(summary)


def _listed(names: Sequence[str]) -> str:
    return f"[{', '.join(names)}]"


__all__ = ["INTRINSIC_STEP", "DefinitionsReloader", "LoadedDefinitions", "ServiceManagerActor", "ServicePlanner"]
