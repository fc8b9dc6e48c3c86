"""ServiceProbes: a service's startup, liveness and readiness probes with Kubernetes' semantics, for one incarnation.

The service actor builds one once its process is spawned, calls `begin()` when the port opens (or at once when it
has none to wait for), and hands it every ProbeMessage. It answers with three callbacks, always on the actor's
thread (docs/protocol.md §6.14):

    begin ──> startup (if declared): probed quickly until it passes; not passed within
              initial_delay_s + failure_threshold × period_s ──> on_failed(startup)
          ──> liveness and readiness (those declared) begin
                readiness: probed quickly until success_threshold passes in a row ──> on_ready   (`started`)
                           then every period_s: failure_threshold failures in a row: unready; passes: ready again
                (no readiness probe: on_ready at once)
                liveness:  every period_s; failure_threshold failures in a row ──> on_failed(liveness)
                           (the actor asks the supervisor to restart the service)

`health` (what `status` and the metrics show) is `starting` until the start passes its probes (or, without startup
and readiness probes, until the port opens), then `healthy`, `unready` while a readiness probe fails, `unhealthy`
once startup or liveness failed for good; each change to one of the last three is one `healthy`/`unhealthy` event with the
probe's answer as flat fields. A probe that passes after failures that did not reach its threshold is logged once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import attrs
import pykka

from kernel_runner.observability.events import Event, emit
from kernel_runner.probes.kinds import Probe, ProbeAnswer
from kernel_runner.probes.loop import ProbeLoop, Schedule, warm_up_period
from kernel_runner.probes.messages import ProbeMessage, StartupBudgetDue
from kernel_runner.supervision.clock import Clock

if TYPE_CHECKING:
    from loguru import Logger

STARTUP = "startup"
LIVENESS = "liveness"
READINESS = "readiness"
PROBE_NAMES = (STARTUP, LIVENESS, READINESS)
# The first period of a probe that has not passed yet (startup, readiness before the start is answered): doubled
# after each failure up to the probe's period_s (loop.warm_up_period). A model's startup probes use the same floor.
WARM_UP_FLOOR_S = 0.05

Health = Literal["starting", "healthy", "unready", "unhealthy"]


@attrs.frozen(kw_only=True)
class ProbeSpec:
    """One declared probe and its numbers (the defaults are Kubernetes')."""

    probe: Probe
    period_s: float = 10.0
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay_s: float = 0.0

    @property
    def budget_s(self) -> float:
        """A startup probe's whole grace, Kubernetes' initialDelaySeconds + failureThreshold × periodSeconds."""
        return self.initial_delay_s + self.failure_threshold * self.period_s


@attrs.frozen(kw_only=True)
class ServiceProbePlan:
    startup: ProbeSpec | None = None
    liveness: ProbeSpec | None = None
    readiness: ProbeSpec | None = None
    warm_up_s: float = WARM_UP_FLOOR_S

    def declared(self) -> Iterator[tuple[str, ProbeSpec]]:
        for name in PROBE_NAMES:
            spec: ProbeSpec | None = getattr(self, name)
            if spec is not None:
                yield name, spec

    @property
    def gates_start(self) -> bool:
        """Whether `started` waits for probes (startup or readiness), not only for the port."""
        return self.startup is not None or self.readiness is not None


@attrs.define
class ProbeTally:
    """Failed probes by probe name since the service was started: kept across its restarts (the incarnations share
    it, one at a time), so the metrics' counter never goes back while the service is in the tree."""

    failures: dict[str, int] = attrs.field(factory=dict)

    def add(self, name: str) -> None:
        self.failures[name] = self.failures.get(name, 0) + 1


@attrs.frozen(kw_only=True)
class ProbeFailure:
    """What on_failed says: which probe failed for good, and why (the Unhealthy exit's detail)."""

    probe: str
    detail: str


class ServiceProbes:
    """One incarnation's probes; see the module docstring. Everything here runs on the owning actor's thread."""

    def __init__(self, plan: ServiceProbePlan, *, tally: ProbeTally, owner: pykka.ActorRef[Any], schedule: Schedule,
                 clock: Clock, log: Callable[[], Logger], name: str, on_ready: Callable[[str], None],
                 on_failed: Callable[[ProbeFailure], None], on_change: Callable[[dict[str, Any]], None]) -> None:
        self._plan = plan
        self._tally = tally
        self._schedule = schedule
        self._clock = clock
        self._log = log
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._on_change = on_change
        self._loops = {
            probe_name: ProbeLoop(probe_name, spec.probe, owner=owner, schedule=schedule, clock=clock, log=log,
                                  on_answer=functools.partial(self._answered, probe_name), name=f"{name}-{probe_name}")
            for probe_name, spec in plan.declared()
        }
        self.health: Health | None = "starting"
        self._begun_at: float | None = None
        self._started = False  # the startup probe passed, or there is none
        self._ready = False  # the readiness probe's verdict (True without one, once started)
        self._gate_passed = False  # on_ready was called
        self._failed = False
        self._stopped = False
        self._budget_epoch = 0
        self._last: tuple[str, ProbeAnswer] | None = None
        self._last_answers: dict[str, ProbeAnswer] = {}
        self._dirty = False  # info() changed since it was last published

    # ---- the owner's calls ------------------------------------------------------------------------------------------
    def begin(self) -> None:
        """The service is up to its port (or has none to wait for): the startup probe, or the others, begin."""
        if self._begun_at is not None or self._stopped:
            return
        self._begun_at = self._clock.monotonic()
        startup = self._plan.startup
        if startup is None:
            self._after_startup()
            self._flush()
            return
        loop = self._loops[STARTUP]
        loop.start()
        loop.probe_in(startup.initial_delay_s)
        self._budget_epoch += 1
        self._schedule(startup.budget_s, StartupBudgetDue(tag=STARTUP, epoch=self._budget_epoch))
        self._log().info("startup probe: {} until it passes, for up to {:g}s", startup.probe.describe(),
                         startup.budget_s)
        self._dirty = True
        self._flush()

    def handle(self, message: ProbeMessage) -> None:
        if self._stopped:
            return
        if isinstance(message, StartupBudgetDue):
            self._handle_budget_spent(message)
        elif (loop := self._loops.get(message.tag)) is not None:
            loop.handle(message)
        self._flush()

    def stop(self) -> None:
        """Nothing is probed from now on (the service stops, or its process ended); `health` is no longer known."""
        if self._stopped:
            return
        self._stopped = True
        self._budget_epoch += 1
        for loop in self._loops.values():
            loop.stop()
        self.health = None
        self._dirty = True
        self._flush()

    def waiting_for(self) -> str | None:
        """What the start still waits for, once the port is open (None: nothing, or the probes have not begun)."""
        if self._begun_at is None or self._gate_passed or self._failed:
            return None
        name = READINESS if self._started else STARTUP
        return f"its {name} probe has not passed yet (last: {self._loops[name].counts.describe_last()})"

    def info(self) -> dict[str, Any]:
        """The service's health figures for `status` (its ChildInfo extra) and the metrics."""
        last = None
        if self._last is not None:
            name, answer = self._last
            last = {"probe": name, **answer.info()}
        return {"health": self.health, "probe_failures": dict(self._tally.failures), "last_probe": last}

    # ---- answers ----------------------------------------------------------------------------------------------------
    def _answered(self, name: str, answer: ProbeAnswer) -> None:
        previous = self._last_answers.get(name)
        self._last_answers[name] = answer
        self._last = (name, answer)
        health_before, counting = self.health, self._counting(name)
        if not answer.ok:
            self._tally.add(name)
        match name:
            case "startup":
                self._startup_answered(answer)
            case "liveness":
                self._liveness_answered(answer)
            case "readiness":
                self._readiness_answered(answer)
        recovered_after = self._loops[name].counts.recovered_after
        if recovered_after and counting and self.health == health_before and not self._stopped:
            self._log().info("{} probe passes again ({}) after {} failure(s)", name, answer.describe(), recovered_after)
        if previous is None or not answer.ok or previous.describe() != answer.describe():
            self._dirty = True  # a steady healthy service publishes nothing: no snapshot per probe

    def _counting(self, name: str) -> bool:
        """Whether failures of this probe were noteworthy (not the expected ones of a start still warming up)."""
        return name == LIVENESS or (name == READINESS and self._gate_passed)

    def _startup_answered(self, answer: ProbeAnswer) -> None:
        if self._started:
            return
        spec, loop = self._plan.startup, self._loops[STARTUP]
        assert spec is not None
        if answer.ok:
            loop.stop()  # Kubernetes: the startup probe runs until it first passes
            self._log().info("startup probe passed after {:.3f}s ({} probe(s); {})", self._since_begun(),
                             loop.counts.probes, answer.describe())
            self._after_startup()
            return
        loop.next_in(warm_up_period(self._plan.warm_up_s, spec.period_s, loop.counts.consecutive_failures))

    def _handle_budget_spent(self, message: StartupBudgetDue) -> None:
        if message.epoch != self._budget_epoch or self._started or self._failed:
            return
        counts = self._loops[STARTUP].counts
        self._fail(STARTUP, f"the startup probe did not pass within {self._since_begun():.1f}s ({counts.probes} "
                            f"probe(s); last: {counts.describe_last()})", counts.last)

    def _after_startup(self) -> None:
        self._started = True
        for name in (LIVENESS, READINESS):
            spec = getattr(self._plan, name)
            if spec is not None:
                self._loops[name].start()
                self._loops[name].probe_in(spec.initial_delay_s)
        if self._plan.readiness is None:
            self._ready = True
            startup = self._loops[STARTUP].counts.last if STARTUP in self._loops else None
            self._pass_gate("startup probe passed" if startup else "up, with no probe to wait for",
                            STARTUP if startup else None, startup)
        self._dirty = True

    def _readiness_answered(self, answer: ProbeAnswer) -> None:
        spec, loop = self._plan.readiness, self._loops[READINESS]
        assert spec is not None
        counts = loop.counts
        if not self._ready and counts.consecutive_successes >= spec.success_threshold:
            self._ready = True
            if not self._gate_passed:
                self._pass_gate(f"readiness probe passed ({answer.describe()})", READINESS, answer)
        elif self._ready and counts.consecutive_failures >= spec.failure_threshold:
            self._ready = False
        self._refresh(READINESS, answer)
        period = spec.period_s if self._gate_passed else warm_up_period(self._plan.warm_up_s, spec.period_s,
                                                                           counts.consecutive_failures)
        loop.next_in(period)

    def _liveness_answered(self, answer: ProbeAnswer) -> None:
        spec, loop = self._plan.liveness, self._loops[LIVENESS]
        assert spec is not None
        failures = loop.counts.counted_failures
        if failures >= spec.failure_threshold:
            self._fail(LIVENESS, f"{failures} liveness probes failed in a row (last: {answer.describe()})", answer)
            return
        self._refresh(LIVENESS, answer)
        loop.next_in(spec.period_s)

    # ---- verdicts ---------------------------------------------------------------------------------------------------
    def _pass_gate(self, why: str, name: str | None, answer: ProbeAnswer | None) -> None:
        self._gate_passed = True
        self._log().info("ready after {:.3f}s: {}", self._since_begun(), why)
        self._set_health("healthy", name, answer, why)
        self._flush()  # published before the owner reports RUNNING, so `status` never shows it running but `starting`
        self._on_ready(why)

    def _fail(self, name: str, detail: str, answer: ProbeAnswer | None) -> None:
        self._failed = True
        for loop in self._loops.values():
            loop.stop()
        self._set_health("unhealthy", name, answer, detail)
        self._flush()  # published before the owner reacts (it may stop the probes, which forgets the health)
        self._on_failed(ProbeFailure(probe=name, detail=detail))

    def _refresh(self, name: str, answer: ProbeAnswer) -> None:
        """The health the probes' verdicts add up to now; a change is one event."""
        if self._failed:
            return
        health: Health
        if not self._gate_passed:
            health = "starting"
        elif not self._ready:
            health = "unready"
        else:
            health = "healthy"
        why = f"{name} probe: {answer.describe()}"
        self._set_health(health, name, answer, why)

    def _set_health(self, health: Health, name: str | None, answer: ProbeAnswer | None, why: str) -> None:
        if health == self.health:
            return
        self.health = health
        fields = {"probe": name, **(answer.fields() if answer is not None else {})}
        if health == "healthy":
            emit(self._log(), "INFO", Event.HEALTHY, "healthy: {}", why, **fields)
        elif health in ("unready", "unhealthy"):
            emit(self._log(), "WARNING", Event.UNHEALTHY, "{}: {}", health, why, **fields)
        self._dirty = True

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self._on_change(self.info())

    def _since_begun(self) -> float:
        return self._clock.monotonic() - (self._begun_at or self._clock.monotonic())


__all__ = [
    "LIVENESS",
    "PROBE_NAMES",
    "READINESS",
    "STARTUP",
    "WARM_UP_FLOOR_S",
    "ProbeFailure",
    "ProbeSpec",
    "ProbeTally",
    "ServiceProbePlan",
    "ServiceProbes",
]
