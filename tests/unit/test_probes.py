"""The probe engine's pieces (docs/protocol.md §6.14): the counts, the warm-up schedule, plans from definitions, and
each kind of probe run once against a real socket or a real process."""

from __future__ import annotations

import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from kernel_runner.probes.kinds import ExecProbe, HttpProbe, ProbeAnswer, TcpProbe, probe_exec, probe_http, probe_tcp
from kernel_runner.probes.loop import ProbeCounts, warm_up_period
from kernel_runner.probes.plans import service_probe_plan
from kernel_runner.probes.service import ProbeSpec
from kernel_runner.servicedefs.intrinsic import INTRINSIC_PROBES
from kernel_runner.servicedefs.schema import ExecCheck, HttpCheck, ProbeDefinition, ProbeDefinitions
from kernel_runner.supervision.clock import REAL_CLOCK
from tests.support.ports import free_port

OK = ProbeAnswer(ok=True, latency_s=0.001, status_code=200)
BAD = ProbeAnswer(ok=False, latency_s=0.001, error="connection refused")


def test_the_warm_up_doubles_from_the_floor_up_to_the_period() -> None:
    assert [warm_up_period(0.05, 1.0, failures) for failures in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert warm_up_period(0.05, 0.0, 3) == 0.05  # never below the floor (a model's interval 0)
    assert warm_up_period(0.05, 10.0, 10_000) == 10.0  # no overflow after a long wait


def test_counts_add_up_and_a_grace_keeps_failures_from_counting() -> None:
    counts = ProbeCounts()
    counts.start_grace(10.0)
    for now in (1.0, 2.0):
        counts.record(BAD, now)
    assert (counts.probes, counts.failures, counts.consecutive_failures, counts.counted_failures) == (2, 2, 2, 0)
    counts.record(BAD, 11.0)
    assert counts.counted_failures == 1 and counts.describe_last() == "connection refused"
    counts.record(OK, 12.0)
    assert (counts.consecutive_failures, counts.counted_failures, counts.recovered_after) == (0, 0, 3)
    counts.record(OK, 13.0)
    assert counts.consecutive_successes == 2 and counts.recovered_after == 0 and counts.failures == 3


def test_a_startup_budget_is_kubernetes_grace() -> None:
    spec = ProbeSpec(probe=TcpProbe(port=1, timeout_s=1.0), period_s=10.0, failure_threshold=30, initial_delay_s=5.0)
    assert spec.budget_s == 305.0


def test_plans_from_definitions(tmp_path: Path) -> None:
    plan = service_probe_plan(INTRINSIC_PROBES, port=2200, cwd=tmp_path, env={})
    assert plan is not None and plan.startup is None and plan.readiness is None and not plan.gates_start
    assert plan.liveness == ProbeSpec(probe=TcpProbe(port=2200, timeout_s=1.0), period_s=10.0, failure_threshold=3)
    probes = ProbeDefinitions(
        readiness=ProbeDefinition(http=HttpCheck(path="/ready", port=9000, expected_status=204), timeout_s=5.0,
                                  success_threshold=2),
        startup=ProbeDefinition(exec=ExecCheck(command=("check",)), timeout_s=0.5))
    plan = service_probe_plan(probes, port=8080, cwd=tmp_path, env={"PATH": "/bin"})
    assert plan is not None and plan.gates_start and plan.liveness is None
    assert plan.readiness is not None and plan.readiness.success_threshold == 2
    # The probe's own port wins over the service's; connecting to 127.0.0.1 gets at most 1 s of the timeout.
    assert plan.readiness.probe == HttpProbe(url="http://127.0.0.1:9000/ready", expected_status=204,
                                             connect_timeout_s=1.0, read_timeout_s=5.0)
    assert plan.startup is not None
    assert plan.startup.probe == ExecProbe(argv=("check",), env={"PATH": "/bin"}, cwd=tmp_path, timeout_s=0.5)
    assert service_probe_plan(None, port=8080, cwd=tmp_path, env={}) is None
    assert service_probe_plan(ProbeDefinitions(), port=8080, cwd=tmp_path, env={}) is None


# ---- each kind, once, for real -------------------------------------------------------------------------------


def test_a_tcp_probe_passes_on_a_listening_port_and_fails_on_a_closed_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        assert probe_tcp(TcpProbe(port=port, timeout_s=1.0), REAL_CLOCK).ok
    closed = probe_tcp(TcpProbe(port=port, timeout_s=1.0), REAL_CLOCK)
    assert not closed.ok and closed.error == "connection refused"


def test_an_exec_probe_answers_with_its_exit_code_and_output(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    passed = probe_exec(ExecProbe(argv=("sh", "-c", "echo all\n echo  fine >&2"), env=env, cwd=tmp_path, timeout_s=5),
                        REAL_CLOCK)
    assert passed.ok and passed.exit_code == 0 and passed.excerpt == "all fine" and passed.error is None
    failed = probe_exec(ExecProbe(argv=("sh", "-c", "exit 3"), env=env, cwd=tmp_path, timeout_s=5), REAL_CLOCK)
    assert not failed.ok and failed.exit_code == 3 and failed.error == "exit code 3" and failed.excerpt is None
    missing = probe_exec(ExecProbe(argv=("/nonexistent/check",), env=env, cwd=tmp_path, timeout_s=5), REAL_CLOCK)
    assert missing.error == "the executable file is not found: /nonexistent/check"


def test_an_exec_probe_that_outlives_its_timeout_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    probe = ExecProbe(argv=("sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"), env={"PATH": "/usr/bin:/bin"},
                      cwd=tmp_path, timeout_s=0.3)
    hung = probe_exec(probe, REAL_CLOCK)
    assert not hung.ok and hung.error == "no exit within 0.3s" and 0.3 <= hung.latency_s < 25
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # its group was killed and reaped


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response({"/ok": 200, "/moved": 302}.get(self.path, 404))
            if self.path == "/moved":
                self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_an_http_probe_without_an_expected_status_passes_on_2xx_and_3xx(http_server: int) -> None:
    def get(path: str, expected: int | None = None) -> ProbeAnswer:
        probe = HttpProbe(url=f"http://127.0.0.1:{http_server}{path}", expected_status=expected,
                          connect_timeout_s=1.0, read_timeout_s=2.0)
        with requests.Session() as session:
            return probe_http(session, probe, REAL_CLOCK)

    assert get("/ok").ok and get("/moved").ok  # a redirect is followed to its answer
    missing = get("/nope")
    assert not missing.ok and missing.status_code == 404 and missing.error == "status 404, expected 2xx or 3xx"
    assert not get("/ok", expected=204).ok and get("/nope", expected=404).ok
    refused = HttpProbe(url=f"http://127.0.0.1:{free_port()}/", expected_status=None, connect_timeout_s=1.0,
                        read_timeout_s=1.0)
    with requests.Session() as session:
        assert probe_http(session, refused, REAL_CLOCK).error == "connection refused"
