"""`--metrics-port` (docs/operations.md §5): a real runner, real runs and services, scraped over HTTP and parsed with
prometheus_client's own parsers; and without the flag, no listener and no prometheus_client at all."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_classic

import kernel_runner
from kernel_runner import RunnerConfig, RunnerHandle, RunnerStartError, start
from kernel_runner.cli.runner import build_parser
from kernel_runner.client import AgentClient, RunResult
from tests.conftest import CHILDREN, MODEL_DIR
from tests.support.ports import free_port
from tests.support.runner_process import RunnerProcesses, runner_processes  # noqa: F401 - a fixture
from tests.support.waiting import wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
LISTENER = [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"]
HEALTH_SERVER = str(CHILDREN / "health_server.py")
SERVING_LINE = re.compile(r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics")


@attrs.frozen
class Scrape:
    """One scrape's samples by name and labels."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    families: dict[str, str]  # name → type

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def matching(self, name: str, **labels: str) -> list[float]:
        wanted = set(labels.items())
        return [value for (sample, have), value in self.samples.items() if sample == name and wanted <= have]


def scrape(port: int, *, openmetrics: bool = True) -> Scrape:
    headers = {"Accept": OPENMETRICS} if openmetrics else {}
    reply = requests.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    kind = reply.headers["Content-Type"]
    assert kind.startswith("application/openmetrics-text" if openmetrics else "text/plain"), kind
    parse = parse_openmetrics if openmetrics else parse_classic
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    families: dict[str, str] = {}
    for family in parse(reply.text):
        families[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"sample twice: {key}"
            samples[key] = sample.value
    return Scrape(samples=samples, families=families)


def scrape_until(port: int, predicate: Callable[[Scrape], bool], *, what: str, timeout: float = 30.0) -> Scrape:
    """Scrape until `predicate` holds (the tree's snapshot follows a child's change a moment later)."""

    def attempt() -> Scrape | None:
        found = scrape(port)
        return found if predicate(found) else None

    found = wait_until(attempt, timeout=timeout, what=what)
    assert found is not None
    return found


def service_info(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "ports": [port], "protocol": "http"}


@pytest.fixture
def metrics_config(runner_config: RunnerConfig) -> RunnerConfig:
    runner_config.service_defs_dir.mkdir(parents=True, exist_ok=True)
    (runner_config.service_defs_dir / "web.json").write_text(json.dumps({"command": LISTENER}))
    return attrs.evolve(runner_config, metrics_port=0)


@pytest.fixture
def metrics_runner(metrics_config: RunnerConfig) -> Iterator[tuple[RunnerHandle, AgentClient, int]]:
    handle = start(metrics_config)
    try:
        assert handle.metrics is not None and handle.metrics.port is not None
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            yield handle, agent, handle.metrics.port
    finally:
        handle.stop(timeout=5)


def child_state(found: Scrape, child: str) -> str | None:
    states = [state for state in ("STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
              if found.value("kernel_runner_child_state", child=child, state=state) == 1.0]
    assert len(states) <= 1, states
    return states[0] if states else None


def test_runs_requests_output_and_the_tree_are_scraped(metrics_runner: tuple[RunnerHandle, AgentClient, int]) -> None:
    _, agent, port = metrics_runner
    results: list[tuple[str, RunResult]] = []
    for _ in range(3):
        results.append(("exec", agent.run("exec", "printf 'x%.0s' $(seq 1000)", timeout=30)))
    results.append(("exec", agent.run("exec", "printf 'oops' >&2; exit 3", timeout=30)))
    # A failing batch: three requests, three ends.
    for op, result in zip(("clean", "build", "exec"), agent.batch(build="echo building; exit 2", exec="echo after"),
                          strict=True):
        results.append((op, result))
    assert [result.exit_code for _, result in results][:4] == [0, 0, 0, 3]
    assert results[5][1].exit_code == 2  # the build failed
    assert agent.start_service(service_info("web", free_port())) == {"status": "started"}
    agent.send("no-such-op", b"")
    agent.status(timeout=30)  # answered after the bad frame was read: both are counted by now

    found = scrape_until(port, lambda s: child_state(s, "service:web") == "RUNNING", what="service:web RUNNING")
    assert found.families["kernel_runner_runs"] == "counter"
    assert found.families["kernel_runner_run_duration_seconds"] == "histogram"
    requested = Counter(op for op, _ in results)
    for op in ("exec", "clean", "build"):
        assert found.value("kernel_runner_requests_total", op=op) == requested[op], op
    assert found.value("kernel_runner_requests_total", op="start-service") == 1
    assert found.value("kernel_runner_requests_total", op="status") == 1
    assert found.value("kernel_runner_requests_total", op="code") == 0
    assert found.value("kernel_runner_bad_frames_total") == 1
    outcomes = Counter((op, "success" if result.exit_code == 0 else "failure") for op, result in results)
    for op in ("exec", "clean", "build"):
        for outcome in ("success", "failure"):
            assert found.value("kernel_runner_runs_total", op=op, outcome=outcome) == outcomes[op, outcome], \
                (op, outcome)
        assert found.value("kernel_runner_run_duration_seconds_count", op=op) == requested[op], op
        assert found.value("kernel_runner_run_duration_seconds_bucket", op=op, le="+Inf") == requested[op], op
    assert (found.value("kernel_runner_run_duration_seconds_sum", op="exec") or 0.0) > 0.0
    stdout = sum(len(result.stdout) for _, result in results)
    stderr = sum(len(result.stderr) for _, result in results)
    assert stdout >= 3000 and stderr >= len(b"oops")
    assert (found.value("kernel_runner_output_bytes_total", stream="stdout") or 0.0) >= stdout
    assert (found.value("kernel_runner_output_bytes_total", stream="stderr") or 0.0) >= stderr
    for child in ("router", "lang", "services", "service:web"):
        assert child_state(found, child) == "RUNNING", child
        assert found.value("kernel_runner_child_up", child=child) == 1.0, child
        assert found.value("kernel_runner_child_restarts_total", child=child) == 0.0, child
    assert found.value("kernel_runner_ready") == 1.0
    assert (found.value("process_resident_memory_bytes") or 0.0) > 0.0

    classic = scrape(port, openmetrics=False)  # a plain Prometheus (or curl) gets the classic text format
    assert classic.value("kernel_runner_requests_total", op="exec") == requested["exec"]


def test_a_killed_service_counts_a_restart_and_an_exit_by_reason(
    metrics_runner: tuple[RunnerHandle, AgentClient, int],
) -> None:
    handle, agent, port = metrics_runner
    assert agent.start_service(service_info("web", free_port())) == {"status": "started"}
    web = wait_until(lambda: next((c for c in handle.which_children() if c.child_id == "service:web" and c.pid), None),
                     timeout=30, what="service:web with a pid")
    assert web.pid is not None
    os.kill(web.pid, signal.SIGKILL)

    found = scrape_until(port, lambda s: child_state(s, "service:web") == "RUNNING" and s.value(
        "kernel_runner_child_restarts_total", child="service:web") == 1, what="service:web restarted once")
    assert (found.value("kernel_runner_child_exits_total", child_kind="service", reason="killed") or 0.0) >= 1
    assert found.value("kernel_runner_child_restarts_total", child="router") == 0.0
    assert sum(found.matching("kernel_runner_child_exits_total", child_kind="router")) == 0


def test_build_info_and_units_are_scraped(metrics_runner: tuple[RunnerHandle, AgentClient, int]) -> None:
    handle, _, port = metrics_runner
    found = scrape(port)
    python = ".".join(str(part) for part in sys.version_info[:3])
    assert found.families["kernel_runner_build"] == "info"
    assert found.value("kernel_runner_build_info", version=kernel_runner.__version__, python_version=python,
                       lang=handle.config.lang) == 1.0
    text = requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept": OPENMETRICS}, timeout=10).text
    units = sorted(line for line in text.splitlines() if line.startswith("# UNIT "))
    assert units == ["# UNIT kernel_runner_output_bytes bytes", "# UNIT kernel_runner_run_duration_seconds seconds"]


def test_a_restart_count_goes_on_when_a_child_that_gave_up_is_started_again(
    metrics_config: RunnerConfig,
) -> None:
    # Up for a moment, then exits 1: one restart after 50 ms, then it gives up (more than 1 restart in a minute).
    doomed = {"command": [*LISTENER, "--exit-after", "0.3"],
              "restart": {"max_restarts": 1, "period_s": 60, "backoff_initial_s": 0.05, "backoff_cap_s": 0.05}}
    (metrics_config.service_defs_dir / "doomed.json").write_text(json.dumps(doomed))
    handle = start(metrics_config)
    try:
        assert handle.metrics is not None and handle.metrics.port is not None
        port = handle.metrics.port
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            counts: list[float] = []
            for _ in range(2):  # started by the agent, gives up; started again by the agent, gives up again
                assert agent.start_service(service_info("doomed", free_port()), timeout=20) == {"status": "started"}
                # Answered `started` once RUNNING, so the FATAL seen next is this life's.
                found = scrape_until(port, lambda s: child_state(s, "service:doomed") == "FATAL",
                                     what="service:doomed gave up", timeout=60)
                counts.append(found.value("kernel_runner_child_restarts_total", child="service:doomed") or 0.0)
                row = next(c for c in handle.which_children() if c.child_id == "service:doomed")
                assert row.restarts == counts[-1]  # `status` and `ctl status` count the same
    finally:
        handle.stop(timeout=5)
    # The first life: one restart. Started again from FATAL (a restart too), then its one restart before it gave up.
    assert counts == [1.0, 3.0]


def test_model_health_is_scraped(metrics_runner: tuple[RunnerHandle, AgentClient, int]) -> None:
    _, agent, port = metrics_runner
    server_port = free_port()
    health = {"path": "/health", "max_retries": 3, "max_wait_time": 1.0, "interval": 0.1, "initial_delay": 30.0,
              "expected_status_code": None}
    payload = {"name": "llama", "model_path": MODEL_DIR, "service": {
        "start_command": [sys.executable, HEALTH_SERVER, str(server_port)], "port": server_port,
        "health_check": health}}
    assert agent.start_model_service(payload, timeout=60) == {"status": "started"}
    service = f"llama-{server_port}"
    found = scrape_until(port, lambda s: s.value("kernel_runner_model_healthy", model="llama", service=service) == 1.0,
                         what="llama healthy")
    assert child_state(found, f"health:llama-{server_port}") == "RUNNING"


def test_service_health_and_failed_probes_are_scraped(metrics_config: RunnerConfig, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.write_text("")
    readiness = {"http": {"path": "/health"}, "period_s": 0.1, "failure_threshold": 2}
    (metrics_config.service_defs_dir / "probed.json").write_text(json.dumps({
        "command": [sys.executable, HEALTH_SERVER, "{ports[0]}", "--control", str(control)],
        "probes": {"readiness": readiness}}))
    handle = start(metrics_config)
    try:
        assert handle.metrics is not None and handle.metrics.port is not None
        port = handle.metrics.port
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            assert agent.start_service(service_info("probed", free_port()), timeout=30) == {"status": "started"}
            assert agent.start_service(service_info("web", free_port()), timeout=30) == {"status": "started"}
            found = scrape_until(port, lambda s: s.value("kernel_runner_child_healthy", child="service:probed") == 1.0,
                                 what="probed healthy")
            assert found.value("kernel_runner_child_healthy", child="service:web") is None  # nothing probes it
            control.write_text("503")  # not ready any more: not restarted, but not healthy either
            found = scrape_until(port, lambda s: s.value("kernel_runner_child_healthy", child="service:probed") == 0.0,
                                 what="probed unready")
            assert (found.value("kernel_runner_probe_failures_total", child="service:probed", probe="readiness") or 0) >= 2
            assert found.families["kernel_runner_probe_failures"] == "counter"
            assert child_state(found, "service:probed") == "RUNNING"
    finally:
        handle.stop(timeout=5)


def test_the_metrics_server_binds_127_0_0_1_by_default(metrics_runner: tuple[RunnerHandle, AgentClient, int]) -> None:
    handle, _, port = metrics_runner
    assert handle.config.metrics_bind == "127.0.0.1"
    assert build_parser().parse_args(["app"]).metrics_bind == "127.0.0.1"
    listening = [conn.laddr for conn in psutil.Process().net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port]
    assert [address.ip for address in listening] == ["127.0.0.1"]


def test_a_taken_metrics_port_fails_the_start_in_one_line(runner_config: RunnerConfig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RunnerStartError) as failure:
            start(attrs.evolve(runner_config, metrics_port=port))
    message = str(failure.value)
    assert message.startswith(f"cannot serve metrics on 127.0.0.1:{port} ") and "\n" not in message
    assert os.strerror(errno.EADDRINUSE) in message


def test_the_cli_serves_metrics_only_with_the_flag(runner_processes: RunnerProcesses) -> None:  # noqa: F811
    plain = runner_processes.start("app")
    with_metrics = runner_processes.start("app", "--metrics-port", "0")
    for runner in (plain, with_metrics):
        runner.agent().status(timeout=30)
    found = wait_until(lambda: SERVING_LINE.search(with_metrics.log_text()), timeout=30, what="the metrics line")
    metrics_port = int(found.group(1))
    assert scrape(metrics_port).value("kernel_runner_requests_total", op="status") == 1

    def listening(runner: Any) -> set[int]:
        return {conn.laddr.port for conn in psutil.Process(runner.pid).net_connections(kind="inet")
                if conn.status == psutil.CONN_LISTEN}

    assert listening(plain) == {plain.port_in, plain.port_out}  # nothing else listens without the flag
    assert listening(with_metrics) == {with_metrics.port_in, with_metrics.port_out, metrics_port}
    assert SERVING_LINE.search(plain.log_text()) is None
    for runner in (plain, with_metrics):
        assert runner.stop() == 0


def test_an_app_runner_without_the_flag_does_not_import_prometheus_client(tmp_path: Path) -> None:
    """In a fresh interpreter, as the CLI starts it: opting in is what loads the library."""
    probe = """
import sys
from pathlib import Path
from kernel_runner.config import RunnerConfig
from kernel_runner.runtime.root import start
from kernel_runner.client import AgentClient

root = Path(sys.argv[1])
(root / "work").mkdir()
for port in (None, 0):
    config = RunnerConfig(lang="app", config_dir=root, work_dir=root / "work", service_defs_dir=root / "defs",
                          bind="127.0.0.1", port_in=0, port_out=0, user_input_socket=root / "input.sock",
                          start_intrinsic_services=False, shutdown_deadline_s=5.0, metrics_port=port)
    handle = start(config)
    with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
        agent.run("exec", "true", timeout=30)
    handle.stop(timeout=5)
    print("LOADED", port, "prometheus_client" in sys.modules, "kernel_runner.observability.metrics" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [line for line in done.stdout.splitlines() if line.startswith("LOADED ")]
    assert reports == ["LOADED None False False", "LOADED 0 True True"]
