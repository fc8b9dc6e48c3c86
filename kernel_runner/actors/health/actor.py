"""HealthCheckerActor: decides when one model service counts as up and alive; the probe engine (kernel_runner/probes)
schedules, runs, times out and counts its HTTP probes, off this actor's thread.

Two contracts, by the agent's generation (docs/protocol.md §12.2):
- SPAWNED (23.09.1+): the server answered the agent when it spawned; the checker starts in LIVENESS and only
  reports health as `model-service-status` transitions. It probes for ever (quickly until the first pass, then every
  `interval`), counts failures only after `initial_delay`, reports unhealthy after more than max_retries in a row,
  and never stops or restarts the server for it. Without an enabled health check it does not probe: the model is
  healthy while its process runs (ServiceUp), unhealthy when it ends.
- VERDICT (before 23.09.1): the checker answers the agent, after the start-up probes below.

Life of one model service under the VERDICT contract (docs/protocol.md §7, docs/architecture.md §4), one `phase`
(Phase, LIFECYCLE) changed only through `to_phase`:

    STARTUP ── probe every `startup_period_s` (50 ms) ──> healthy: reply `started`, status is_healthy=true
       │                                                  └─> LIVENESS: probe every `interval`
       ├─ the agent's reply deadline comes before the budget ends (a long initial_delay) ──> reply `failed`;
       │      still STARTUP
       ├─ server process ended / could not start ──> STOPPING_SERVER
       └─ budget (max_retries × max_wait_time + initial_delay) spent, then
              ├─ server stopped (model_stop_on_startup_failure, the default) ──> STOPPING_SERVER
              └─ server kept ──> reply `failed` "service unhealthy" (status is_healthy=false if the agent was
                     answered already) ──> LIVENESS with health unhealthy (a late recovery is reported)
    STOPPING_SERVER: the supervisor stops the server for good; once it is gone (its binding stops this checker),
        reply `failed` (so its port is free when the agent hears it, docs/protocol.md §7.2 step 4) ──> DONE
    LIVENESS: max_retries consecutive failures or a dead process ──> status is_healthy=false (once per
        transition), `unhealthy` log line, server restarted through the supervisor (RestartChild(Unhealthy));
        a success after that ──> status is_healthy=true.
    DONE: nothing left to watch; an incarnation started in DONE ends at once.

The phase says how probes are scheduled and what a result means. `health` (unknown/healthy/unhealthy) and
`replied` are what the agent has heard, kept apart from it: health flips back and forth within LIVENESS (as
phases it would add edges that change neither the schedule nor what a probe means), and the early reply or a
stop answers the agent without changing how the checker probes.

The supervisor restarts this actor if it crashes; the phase and what the agent was already told live in a
HealthMemo shared by the incarnations (only one runs at a time), so a new incarnation goes on in the phase the
last one reached, and the agent gets exactly one reply and no repeated transition.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Literal

import attrs

from kernel_runner.context import RunnerContext
from kernel_runner.generations import ModelReply
from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    HealthCheck,
    ModelServiceStatus,
    ServiceAnswer,
    ServiceProcessEnded,
    ServiceStartFailed,
    ServiceUp,
)
from kernel_runner.observability.events import Event, emit
from kernel_runner.probes.kinds import HttpProbe, ProbeAnswer, probe_http
from kernel_runner.probes.loop import ProbeLoop, warm_up_period
from kernel_runner.probes.messages import ProbeMessage
from kernel_runner.supervision.actor import Lifecycle, PhasedActor
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.exits import NormalExit, ShutdownExit, Unhealthy
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.supervision.spec import ChildContext, ChildState, RestartChild, StopChild, StopRequested

if TYPE_CHECKING:
    import requests

# docs/protocol.md §3.5: the agent waits `max_retries × max_wait_time + 10` s; we answer at least this much earlier, because its
# clock started before ours (request transit, supervisor, spawn).
AGENT_REPLY_SLACK_S = 10.0
REPLY_MARGIN_S = 2.0
MIN_READ_TIMEOUT_S = 0.001
MAX_CONNECT_TIMEOUT_S = 1.0
UNHEALTHY_TEXT = "service unhealthy"  # upstream's reply text (docs/protocol.md §7.2 step 5)


class Phase(enum.Enum):
    """The checker's regimen for one model service (see the module docstring); its value is what `status` shows."""

    STARTUP = "startup"
    """Probing every `startup_period_s` until the first success or the end of the startup budget."""
    LIVENESS = "liveness"
    """Up once (or kept after a failed start): probing every `interval`; consecutive failures restart the server."""
    STOPPING_SERVER = "stopping-server"
    """The start failed: the server is being stopped for good; `failed` goes out once it is gone (port free)."""
    DONE = "done"
    """Terminal: the start failed and the server was stopped for good; nothing is left to watch."""


LIFECYCLE = Lifecycle(
    initial=Phase.STARTUP,
    transitions={
        Phase.STARTUP: frozenset({Phase.LIVENESS, Phase.STOPPING_SERVER}),
        Phase.LIVENESS: frozenset(),
        Phase.STOPPING_SERVER: frozenset({Phase.DONE}),
        Phase.DONE: frozenset(),
    },
    # The supervisor's view of each phase; None: nothing to report (the checker ends in it).
    child_states={
        Phase.STARTUP: ChildState.RUNNING,
        Phase.LIVENESS: ChildState.RUNNING,
        # Not STOPPING: the supervisor must still ask this checker to stop at the runner's shutdown (it answers then).
        Phase.STOPPING_SERVER: ChildState.RUNNING,
        Phase.DONE: None,
    },
)

Health = Literal["unknown", "healthy", "unhealthy"]


@attrs.frozen(kw_only=True)
class HealthPlan:
    """Everything one model service's checker needs, resolved by runtime/tree.py (model_child_specs)."""

    model_name: str
    # `<model name>-<port>`: the service name the agent uses for shutdown-service (docs/protocol.md §7.1).
    service_name: str
    server_child: ChildId
    url: str
    check: HealthCheck
    # VERDICT: this checker answers the agent after the start-up probes; SPAWNED: the server answered, this checker
    # only reports health, starting in LIVENESS (docs/protocol.md §12.2).
    contract: ModelReply = ModelReply.VERDICT
    # The start-model-service's answer, when this checker gives it (VERDICT).
    answer: ServiceAnswer | None = None
    # False: no HTTP probes (no health check, or `enable: false`); health follows the server's process.
    probing: bool = True
    startup_period_s: float
    interval_s: float
    send_status: bool
    stop_on_startup_failure: bool
    restart_on_unhealthy: bool

    @property
    def read_timeout_s(self) -> float:
        return max(MIN_READ_TIMEOUT_S, self.check.max_wait_time)

    @property
    def connect_timeout_s(self) -> float:
        return min(self.read_timeout_s, MAX_CONNECT_TIMEOUT_S)

    @property
    def startup_budget_s(self) -> float:
        """k8s startup probe: the whole grace; a success inside it ends it early (Docker's start period)."""
        return self.check.max_retries * self.check.max_wait_time + (self.check.initial_delay or 0.0)

    @property
    def spawned(self) -> bool:
        return self.contract is ModelReply.SPAWNED

    @property
    def grace_s(self) -> float:
        """How long failures do not count, from the first start and after each server restart.

        VERDICT: the whole start-up budget (docs/protocol.md §7.2 step 4); SPAWNED: `initial_delay` only, the grace of
        a large model that is still loading (upstream 25.12+), during which probing goes on.
        """
        return (self.check.initial_delay or 0.0) if self.spawned else self.startup_budget_s

    @property
    def unhealthy_after(self) -> int:
        """Consecutive counted failures that make the model unhealthy: max_retries (VERDICT, this runner's
        long-standing rule) or more than max_retries (SPAWNED, as the 23.09.8+ runner)."""
        return self.check.max_retries + (1 if self.spawned else 0)

    def period_s(self, *, healthy_once: bool, failures: int) -> float:
        """The next probe's period. Never below the start-up period (an `interval` of 0 means "as often as that").

        SPAWNED: until the first pass, probes come quickly and back off towards `interval` (so a model that loads
        for half an hour is not probed 20 times a second, and one that is ready at once is reported within ms).
        """
        floor = self.startup_period_s
        if self.spawned and not healthy_once:
            return warm_up_period(floor, self.interval_s, failures)
        return max(floor, self.interval_s)

    def probe(self) -> HttpProbe:
        return HttpProbe(url=self.url, expected_status=self.check.expected_status_code,
                         connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.read_timeout_s)

    @property
    def reply_within_s(self) -> float:
        """The latest moment, from the checker's first start, that the agent still takes our reply (docs/protocol.md §3.5)."""
        agent_wait = self.check.max_retries * self.check.max_wait_time + AGENT_REPLY_SLACK_S
        return min(self.startup_budget_s, agent_wait - REPLY_MARGIN_S)


@attrs.define(kw_only=True)
class HealthMemo:
    """The phase and what the agent has been told; survives checker restarts (one incarnation at a time).

    `phase` is written only by the current incarnation's PhaseMachine (HealthCheckerActor.phase_changed).
    """

    started_at: float | None = None
    replied: bool = False
    phase: Phase = Phase.STARTUP
    health: Health = "unknown"
    # A probe has passed once: from then on probes come every `interval` (before, SPAWNED probes back off to it).
    healthy_once: bool = False
    # STOPPING_SERVER: the `failed` text the agent gets once the server is gone.
    failure: str | None = None
    # Failed probes since the model service started (the metrics' counter, docs/operations.md §5).
    probe_failures: int = 0


# ---- messages private to this actor ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StartupDeadline:
    """Ticker → checker: the reply deadline or the end of the startup budget has come."""


# ---- one HTTP probe by the names tests/actors/test_health_checker.py drives it with ---------------------------


@attrs.frozen(kw_only=True)
class ProbeRequest:
    seq: int
    url: str
    connect_timeout_s: float
    read_timeout_s: float
    expected_status: int


def probe_once(session: requests.Session, request: ProbeRequest, clock: Clock) -> ProbeAnswer:
    """The checker's probe, run once (the engine's probe_http)."""
    return probe_http(session, HttpProbe(url=request.url, expected_status=request.expected_status,
                                         connect_timeout_s=request.connect_timeout_s,
                                         read_timeout_s=request.read_timeout_s), clock)


class HealthCheckerActor(PhasedActor[Phase]):
    """Decides when a model service counts as up and alive; its ProbeLoop runs the probes."""

    lifecycle = LIFECYCLE

    def __init__(self, *, ctx: ChildContext, runner: RunnerContext, plan: HealthPlan, memo: HealthMemo) -> None:
        super().__init__(ctx=ctx, initial_phase=memo.phase)  # an incarnation goes on in the phase the last one reached
        self._router = runner.router
        self.plan = plan
        self.memo = memo
        # Its counts' grace: after a restart, failures do not count toward the next one until the server had its
        # startup budget again (`counted_failures` is what unhealthy_after compares with).
        self._probe = ProbeLoop("health", plan.probe(), owner=self.actor_ref, schedule=self.schedule,
                                clock=ctx.clock, log=lambda: self.log, on_answer=self._handle_outcome,
                                name=plan.service_name)

    def phase_changed(self, old: Phase, new: Phase) -> None:
        """A phase change is written back to the memo (the base then reports it to the supervisor)."""
        self.memo.phase = new

    # ---- life -----------------------------------------------------------------------------------------
    def start_child(self) -> None:
        now = self.ctx.clock.monotonic()
        if self.memo.started_at is None:
            self.memo.started_at = now
        if self.phase is Phase.DONE:
            # The previous incarnation ended the model service; nothing is left to watch.
            self.finish(NormalExit())
            return
        if self.phase is Phase.STOPPING_SERVER:
            self.report_phase()
            self._stop_server()  # again: the previous incarnation may have died before the supervisor heard it
            return
        if self.plan.spawned:
            self._probe.counts.grace_until = self.memo.started_at + self.plan.grace_s
        if self.plan.probing:
            self._probe.start()
        self.report_phase()  # the phase this incarnation inherited (no edge, so no report from the base)
        if not self.plan.probing:
            self.log.info("no enabled health check: {} counts as healthy while its process runs",
                          self.plan.service_name)
            self._publish()
            return
        if self.phase is Phase.LIVENESS and self.plan.spawned and not self.memo.healthy_once:
            self.log.info(
                "probing {} until it stops: first every {:.0f} ms, backing off to every {:.1f}s; failures count after "
                "{:.1f}s of grace", self.plan.url, self.plan.startup_period_s * 1000, self.plan.interval_s,
                max(0.0, self._probe.counts.grace_until - now),
            )
        elif self.phase is Phase.STARTUP:
            elapsed = now - self.memo.started_at
            if not self.memo.replied:
                self.schedule(max(0.0, self.plan.reply_within_s - elapsed), StartupDeadline())
            if self.plan.startup_budget_s > self.plan.reply_within_s or self.memo.replied:
                self.schedule(max(0.0, self.plan.startup_budget_s - elapsed), StartupDeadline())
            self.log.info(
                "probing {} every {:.0f} ms for up to {:.1f}s", self.plan.url, self.plan.startup_period_s * 1000,
                max(0.0, self.plan.startup_budget_s - elapsed),
            )
        else:
            self.log.info("restarted; probing {} every {:.1f}s", self.plan.url, self.plan.interval_s)
        self._publish()
        self._probe.probe_now()

    def cleanup(self) -> None:
        self._probe.stop()

    def handle(self, message: object) -> object:
        match message:
            case ProbeMessage():
                return self._probe.handle(message)
            case StartupDeadline():
                return self._handle_startup_deadline()
            case ServiceProcessEnded():
                return self._handle_service_process_ended(message)
            case ServiceStartFailed():
                return self._handle_service_start_failed(message)
            case ServiceUp():
                return self._handle_service_up()
            case _:
                return super().handle(message)

    def request_stop(self, message: StopRequested) -> None:
        if self.phase is Phase.STOPPING_SERVER:
            # The server is gone (this checker is bound to it), or the runner stops: answer the failure now.
            assert self.memo.failure is not None
            self.to_phase(Phase.DONE, f"server stopped ({message.reason})")  # STOPPING_SERVER -> DONE
            self._reply_once("failed", self.memo.failure)
            self._publish()
            self.finish(NormalExit())
            return
        # Exactly one reply per request (docs/protocol.md §3.6): a model stopped while starting is answered too.
        self._reply_once("failed", f"the model service was stopped before it became healthy ({message.reason})")
        self.finish(ShutdownExit())

    # ---- probing ----------------------------------------------------------------------------------------
    def _handle_outcome(self, result: ProbeAnswer) -> None:
        """The loop's verdict on one probe, already counted."""
        if not result.ok:
            self.memo.probe_failures += 1
        self._publish()
        if self.phase is Phase.STARTUP:
            if result.ok:
                self._startup_succeeded(result)
                return
            self._probe.next_in(self.plan.startup_period_s)
            return
        if self.phase is Phase.LIVENESS:
            if result.ok:
                if self.memo.health != "healthy":
                    if self.memo.healthy_once:
                        emit(self.log, "INFO", Event.HEALTHY, "healthy again: status {} in {:.1f} ms",
                             result.status_code, result.latency_s * 1000, probe="health", **result.fields())
                    else:
                        self._log_first_pass(result, self._since_first_start())
                    self._set_health("healthy")
                self.memo.healthy_once = True
            elif self._probe.counts.counted_failures >= self.plan.unhealthy_after:
                self._liveness_failed()
            self._probe.next_in(self._period())

    # ---- startup -----------------------------------------------------------------------------------------
    def _since_first_start(self) -> float:
        assert self.memo.started_at is not None
        return self.ctx.clock.monotonic() - self.memo.started_at

    def _log_first_pass(self, result: ProbeAnswer, took: float) -> None:
        """The `healthy` event of a model's first passing probe, under either contract."""
        emit(self.log, "INFO", Event.HEALTHY, "healthy after {:.3f}s ({} probe(s); status {})", took,
             self._probe.counts.probes, result.status_code, probe="health", **result.fields())

    def _startup_succeeded(self, result: ProbeAnswer) -> None:
        took = self._since_first_start()
        self.to_phase(Phase.LIVENESS, f"healthy after {took:.3f}s")  # STARTUP -> LIVENESS
        self._log_first_pass(result, took)
        self._reply_once("started", None)
        self._set_health("healthy")
        self.memo.healthy_once = True
        self._probe.next_in(self._period())

    def _handle_startup_deadline(self) -> None:
        if self.phase is not Phase.STARTUP:
            return
        assert self.memo.started_at is not None
        elapsed = self.ctx.clock.monotonic() - self.memo.started_at
        if elapsed + 1e-3 < self.plan.startup_budget_s:
            if self.memo.replied:
                return
            # Only with an initial_delay longer than the agent waits: answer now, keep probing for the rest of it.
            self.log.warning("not healthy within {:.1f}s; answered `failed` before the agent gives up, still probing "
                             "for {:.1f}s of startup grace", elapsed, self.plan.startup_budget_s - elapsed)
            self._reply_once("failed", UNHEALTHY_TEXT)
            return
        counts = self._probe.counts
        emit(self.log, "WARNING", Event.UNHEALTHY, "unhealthy: not healthy within {:.1f}s ({} probe(s); last: {})",
             elapsed, counts.probes, counts.describe_last(), **self._last_fields())
        self._startup_failed(UNHEALTHY_TEXT, keep_server=not self.plan.stop_on_startup_failure)

    def _handle_service_process_ended(self, message: ServiceProcessEnded) -> None:
        if self.phase is Phase.STARTUP:
            error = f"the model service exited during startup (code {message.exit_code})"
            if message.output_tail:
                error += f"; last output:\n{message.output_tail}"
            emit(self.log, "WARNING", Event.UNHEALTHY, "unhealthy: {}", error)
            self._startup_failed(error, keep_server=False)
            return
        if self.phase is Phase.LIVENESS:
            # Never a stale "healthy" after the process died (Backend.AI #1833); the supervisor restarts it.
            emit(self.log, "WARNING", Event.UNHEALTHY,
                 "unhealthy: the server process exited (code {}); the supervisor restarts it", message.exit_code)
            self._restart_grace()
            self._set_health("unhealthy")
            self._publish()

    def _handle_service_up(self) -> None:
        """Only without probes does the process's being up decide; otherwise the HTTP probe does (servers listen
        before they are ready)."""
        if self.plan.probing or self.phase is not Phase.LIVENESS or self.memo.health == "healthy":
            return
        emit(self.log, "INFO", Event.HEALTHY, "healthy: its process runs (no enabled health check to probe)")
        self._set_health("healthy")

    def _handle_service_start_failed(self, message: ServiceStartFailed) -> None:
        if self.plan.spawned and self.memo.health == "unknown":
            # The server's own `failed` reply told the agent; a status on top would say it twice.
            self.log.info("the server could not start: {}", message.error)
            return
        if self.phase is Phase.STARTUP:
            emit(self.log, "WARNING", Event.UNHEALTHY, "unhealthy: the server could not start: {}", message.error)
            self._startup_failed(message.error, keep_server=False)
        elif self.phase is Phase.LIVENESS:
            emit(self.log, "WARNING", Event.UNHEALTHY,
                 "unhealthy: the restarted server could not start: {}", message.error)
            self._set_health("unhealthy")
            self._publish()

    def _startup_failed(self, error: str, *, keep_server: bool) -> None:
        if self.memo.replied:
            self._set_health("unhealthy")  # the agent heard `failed` already; the later verdict goes as a status
        first_line = error.partition("\n")[0]
        self._probe.cancel()  # a probe tick still pending belongs to the start-up that just ended
        if keep_server:
            self._reply_once("failed", error)
            # Upstream left an unhealthy model running; we keep watching it, so a late recovery is reported.
            self.to_phase(Phase.LIVENESS, f"start failed, server kept: {first_line}")  # STARTUP -> LIVENESS
            self.memo.health = "unhealthy"
            self._probe.counts.start_grace(self._probe.counts.grace_until)
            self._publish()
            self._probe.next_in(self._period())
            return
        # The agent may retry on the same port as soon as it hears `failed`: the server goes first. This checker is
        # bound to it, so the supervisor stops us once it is gone for good, and request_stop answers then.
        self.memo.failure = error
        self.to_phase(Phase.STOPPING_SERVER, f"start failed: {first_line}")  # STARTUP -> STOPPING_SERVER
        self._publish()
        self._stop_server()

    def _stop_server(self) -> None:
        assert self.memo.failure is not None
        self._probe.stop()
        why = self.memo.failure.partition("\n")[0]
        tell_if_alive(self.ctx.supervisor, StopChild(child_id=self.plan.server_child, reason=f"model unhealthy: {why}"))

    # ---- liveness ----------------------------------------------------------------------------------------
    def _liveness_failed(self) -> None:
        counts = self._probe.counts
        detail = f"{counts.counted_failures} consecutive failed probes (last: {counts.describe_last()})"
        if self.memo.health != "unhealthy":
            emit(self.log, "WARNING", Event.UNHEALTHY, "unhealthy: {}", detail, **self._last_fields())
            self._set_health("unhealthy")
        if self.plan.restart_on_unhealthy:
            self.log.warning("asking the supervisor to restart {} ({})", self.plan.server_child, detail)
            tell_if_alive(self.ctx.supervisor, RestartChild(child_id=self.plan.server_child, reason=Unhealthy(detail=detail)))
            # Count afresh after a grace: the restarted server gets its startup budget before the next restart.
            self._restart_grace()
        else:
            counts.start_grace(counts.grace_until)  # count afresh: unhealthy is reported once per transition

    def _restart_grace(self) -> None:
        self._probe.counts.start_grace(self.ctx.clock.monotonic() + self.plan.grace_s)

    def _period(self) -> float:
        return self.plan.period_s(healthy_once=self.memo.healthy_once,
                                  failures=self._probe.counts.consecutive_failures)

    def _set_health(self, health: Health) -> None:
        """A new verdict (not a phase change): published, and told the agent once per change."""
        if self.memo.health == health:
            return
        self.memo.health = health
        self._publish()
        if self.plan.send_status:
            # docs/protocol.md §7.5 (23.09+): one message per transition; the 23.03 agent files it under the run queue (§3.2).
            self._router.tell(ModelServiceStatus(model_name=self.plan.model_name, is_healthy=health == "healthy"))

    # ---- replies and status ------------------------------------------------------------------------------
    def _reply_once(self, status: Literal["started", "failed"], error: str | None) -> None:
        if self.memo.replied:
            return
        self.memo.replied = True
        if self.plan.answer is not None:
            self.plan.answer.send(status, error)
        if status == "started":
            self.log.info("Model service {} has started", self.plan.service_name)

    def _last_fields(self) -> dict[str, object]:
        """The last answer as an event's flat fields (docs/operations.md §2)."""
        last = self._probe.counts.last
        return {"probe": "health", **(last.fields() if last is not None else {})}

    def _publish(self) -> None:
        counts = self._probe.counts
        self.update_info({
            "model": self.plan.model_name,
            "service": self.plan.service_name,
            "url": self.plan.url,
            "phase": self.phase.value,
            "health": self.memo.health,
            "consecutive_failures": counts.consecutive_failures,
            "probes": counts.probes,
            "last_probe": None if counts.last is None else counts.last.info(),
            "probe_failures": {"health": self.memo.probe_failures},
        })
