"""Prometheus metrics for ops, served over HTTP with `--metrics-port` (docs/operations.md §5).

Opt-in: this module, and prometheus_client with it, is imported only when a metrics port is configured, so a runner
without one loads and costs nothing more (docs/architecture.md §2.1). Each figure is read where it is cheapest:
- the tree (child states, restarts, health and failed probes, model health, readiness) from the status board's
  latest snapshot, at scrape time, by a collector: nothing is done for it while nobody scrapes;
- exits by reason from the lifecycle events (kernel_runner/observability/events.py, docs/operations.md §2), through a loguru sink;
- requests, runs and output bytes by the router's I/O thread (AgentLink) where it decodes a request and encodes a
  message for the agent: two calls it skips with a None check when metrics are off.
"""

from __future__ import annotations

import collections
import contextlib
import platform
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, get_args
from wsgiref.simple_server import WSGIServer

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from kernel_runner import __version__
from kernel_runner.messages import AgentRequest, BadFrame, Finished, Html, Media, Output, RunKind, ToAgent
from kernel_runner.observability.events import Event
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.exits import EXIT_KINDS
from kernel_runner.supervision.spec import ChildState, TreeSnapshot
from kernel_runner.wire.frames import OPS

if TYPE_CHECKING:
    from loguru import Message, Record

RUN_OPS: tuple[str, ...] = get_args(RunKind)
# What the agent gets as user output: the two streams, and rich output as the `media` and `html` records carry it.
OUTPUT_STREAMS = ("stdout", "stderr", "media", "html")
# From a quick `exec` to a long training job.
RUN_DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                          float("inf"))
# Requests whose `finished` has not been sent yet, per op. The language runner answers every run exactly once and in
# order, so these drain; the bound only keeps a bug from growing memory.
MAX_RUNS_IN_FLIGHT = 10_000
CLOSE_TIMEOUT_S = 2.0


def child_kind(child_id: str) -> str:
    """`service:web` → `service`; an id without a colon (`router`, `lang`) is its own kind."""
    return child_id.partition(":")[0]


class TreeCollector(Collector):
    """Reads the supervisor's latest tree snapshot when scraped (the snapshot is swapped whole: no lock needed)."""

    def __init__(self, snapshot: Callable[[], TreeSnapshot], ready: Callable[[], bool]) -> None:
        self._snapshot = snapshot
        self._ready = ready

    def collect(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily("kernel_runner_ready", "1 once start-up is done (the first status is answered)")
        ready.add_metric([], 1.0 if self._ready() else 0.0)
        state = GaugeMetricFamily("kernel_runner_child_state", "1 for the state the child is in, 0 for the others",
                                  labels=["child", "state"])
        up = GaugeMetricFamily("kernel_runner_child_up", "1 while the child is RUNNING", labels=["child"])
        restarts = CounterMetricFamily("kernel_runner_child_restarts", "Restarts of the child since it was added",
                                       labels=["child"])
        healthy = GaugeMetricFamily("kernel_runner_model_healthy", "1 while the model service answers its health "
                                    "check, 0 before its first healthy answer and while unhealthy",
                                    labels=["model", "service"])
        child_healthy = GaugeMetricFamily("kernel_runner_child_healthy", "1 while the child's probes say it is healthy, "
                                          "0 otherwise; only children with probes", labels=["child"])
        probe_failures = CounterMetricFamily("kernel_runner_probe_failures", "Failed probes of the child since it was "
                                             "started, by probe", labels=["child", "probe"])
        for child in self._snapshot().children:
            for each in ChildState:
                state.add_metric([child.child_id, each.value], 1.0 if child.state is each else 0.0)
            up.add_metric([child.child_id], 1.0 if child.state is ChildState.RUNNING else 0.0)
            restarts.add_metric([child.child_id], child.restarts)
            # A service's or a model checker's extra (docs/protocol.md §6.14, §7.2): `health` while it is probed.
            health = child.extra.get("health")
            if isinstance(health, str):
                child_healthy.add_metric([child.child_id], 1.0 if health == "healthy" else 0.0)
            failures = child.extra.get("probe_failures")
            if isinstance(failures, dict):
                for probe, count in failures.items():
                    if isinstance(probe, str) and isinstance(count, int):
                        probe_failures.add_metric([child.child_id, probe], count)
            if child_kind(child.child_id) == "health":  # its extra: HealthCheckerActor._publish (actors/health.py)
                # By service too: two model services may serve one model, and a sample twice would spoil the scrape.
                model, service = child.extra.get("model"), child.extra.get("service")
                if isinstance(model, str) and isinstance(service, str):
                    healthy.add_metric([model, service], 1.0 if child.extra.get("health") == "healthy" else 0.0)
        yield from (ready, state, up, restarts, healthy, child_healthy, probe_failures)


class RunnerMetrics:
    """The runner's own registry (never prometheus_client's global one), what feeds it, and its HTTP server."""

    def __init__(self, *, snapshot: Callable[[], TreeSnapshot], ready: Callable[[], bool], clock: Clock,
                 lang: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._clock = clock
        registry = self.registry
        Info("kernel_runner_build", "What runs: the runner's version, its Python and the language it serves",
             registry=registry).info({"version": __version__, "python_version": platform.python_version(),
                                      "lang": lang})
        requests = Counter("kernel_runner_requests", "Requests from the agent, by op", ["op"], registry=registry)
        self._bad_frames = Counter("kernel_runner_bad_frames", "Frames from the agent that were not a valid request",
                                   registry=registry)
        runs = Counter("kernel_runner_runs", "Runs answered with `finished`, by op and outcome (exit code 0 or not)",
                       ["op", "outcome"], registry=registry)
        # With their unit (OpenMetrics' `# UNIT` line); the names already end in it, so they stay as they were.
        durations = Histogram("kernel_runner_run_duration_seconds", "From a run's request to its `finished`, by op",
                              ["op"], buckets=RUN_DURATION_BUCKETS_S, registry=registry, unit="seconds")
        output = Counter("kernel_runner_output_bytes", "User output put out for the agent, by stream", ["stream"],
                         registry=registry, unit="bytes")
        self._exits = Counter("kernel_runner_child_exits", "Ends of a child's incarnation, by child kind and reason",
                              ["child_kind", "reason"], registry=registry)
        registry.register(TreeCollector(snapshot, ready))
        ProcessCollector(registry=registry)
        # Every label value bound once, so the series exist from the start and the hot path is a lookup and an inc.
        self._requests = {op.encode("ascii"): requests.labels(op) for op in sorted(OPS)}
        self._runs = {(op, ok): runs.labels(op, "success" if ok else "failure") for op in RUN_OPS for ok in (True, False)}
        self._durations = {op: durations.labels(op) for op in RUN_OPS}
        self._output = {stream: output.labels(stream) for stream in OUTPUT_STREAMS}
        # Only AgentLink's thread touches these (a request's time goes in, its `finished` takes it out).
        self._run_starts: dict[str, collections.deque[float]] = {
            op: collections.deque(maxlen=MAX_RUNS_IN_FLIGHT) for op in RUN_OPS}
        self._starts_by_frame = {op.encode("ascii"): starts for op, starts in self._run_starts.items()}
        self._sink_id: int | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def __repr__(self) -> str:
        return f"RunnerMetrics(port={self.port})"

    # ---- feeds ------------------------------------------------------------------------------------------------------
    # Both feeds look labels up with .get: a slip in counting must never cost the agent a request or the link.
    def request_received(self, frames: Sequence[bytes], request: AgentRequest | BadFrame) -> None:
        """AgentLink's thread, after each decode."""
        if isinstance(request, BadFrame):
            self._bad_frames.inc()
            return
        op = frames[0]  # a request that decoded has exactly two frames, the first a known op
        counter = self._requests.get(op)
        if counter is not None:
            counter.inc()
        starts = self._starts_by_frame.get(op)
        if starts is not None:
            starts.append(self._clock.monotonic())

    def message_encoded(self, message: ToAgent, frames: Sequence[bytes]) -> None:
        """AgentLink's thread, as each message for the agent is encoded (merged chunks count once, by their bytes)."""
        if isinstance(message, Finished):
            self._run_finished(message)
            return
        stream: str
        if isinstance(message, Output):
            stream, size = message.stream, len(message.data)
        elif isinstance(message, Media):
            stream, size = "media", len(frames[1])
        elif isinstance(message, Html):
            stream, size = "html", len(frames[1])
        else:
            return
        counter = self._output.get(stream)
        if counter is not None:
            counter.inc(size)

    def _run_finished(self, finished: Finished) -> None:
        runs = self._runs.get((finished.kind, finished.exit_code == 0))
        starts = self._run_starts.get(finished.kind)
        durations = self._durations.get(finished.kind)
        if runs is None or starts is None or durations is None:
            return
        runs.inc()
        if starts:  # the oldest request of this op: runs are answered in the order they came (architecture §5.1)
            durations.observe(max(0.0, self._clock.monotonic() - starts.popleft()))

    def install(self) -> RunnerMetrics:
        """Count exits from the lifecycle events; before the first child starts, so no exit is missed.

        At INFO, where the supervisor logs every `exited` (INFO, or WARNING when nobody asked for it): a lower level
        would make loguru build a record for every debug call on the run path, which no other sink wants."""
        self._sink_id = logger.add(self._on_exited, level="INFO", filter=_is_exited_event, format="{message}",
                                   backtrace=False, diagnose=False, catch=True)
        return self

    def _on_exited(self, message: Message) -> None:
        extra = message.record["extra"]
        reason = extra.get("reason")
        # By kind, not by child id: a counter's series stay for the process's life, and a runner that starts
        # services under ever new names would grow them without bound. Per-child counts: kernel_runner_child_restarts.
        self._exits.labels(child_kind(str(extra.get("child", ""))),
                           reason if reason in EXIT_KINDS else "other").inc()  # exits.EXIT_KINDS: bounded

    # ---- the HTTP server ------------------------------------------------------------------------------------------
    def serve(self, port: int, bind: str) -> int:
        """prometheus_client's own server, in its daemon thread: OpenMetrics to a client that asks for it (Accept:
        application/openmetrics-text), the classic text format otherwise. Returns the bound port (0 picks one);
        raises OSError when it cannot bind."""
        self._server, self._thread = start_http_server(port, addr=bind, registry=self.registry)
        self.port = int(self._server.server_port)
        logger.bind(child="metrics").info("serving metrics on http://{}:{}/metrics", _host(bind), self.port)
        return self.port

    def close(self) -> threading.Thread:
        """Stop counting and serving. The server's loop notices within its poll interval (0.5 s), so the shutdown
        runs in a thread the caller joins (bounded) when it needs the port free, while it stops everything else."""
        if self._sink_id is not None:
            with contextlib.suppress(ValueError):  # gone already: someone called logger.remove() for every sink
                logger.remove(self._sink_id)
            self._sink_id = None
        server, thread, self._server, self._thread = self._server, self._thread, None, None

        def shut_down() -> None:
            if server is not None:
                server.shutdown()
                server.server_close()
            if thread is not None:
                thread.join(timeout=CLOSE_TIMEOUT_S)

        closing = threading.Thread(target=shut_down, name="metrics-close", daemon=True)
        closing.start()
        return closing


def _is_exited_event(record: Record) -> bool:
    return bool(record["extra"].get("event") == Event.EXITED.value)


def _host(bind: str) -> str:
    return f"[{bind}]" if ":" in bind else bind


__all__ = ["OUTPUT_STREAMS", "RUN_OPS", "RunnerMetrics", "child_kind"]
