"""Load on a real runner process: many queued ops, many services and model servers started at once, and `status`
answered all along (docs/protocol.md §2.3, §3.1). How fast `status` answers under this load is a benchmark
(bench/bench_status_under_load.py), never asserted here."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections import Counter
from typing import Any

import pytest

from kernel_runner.client import AgentClient, Reply
from tests.conftest import CHILDREN
from tests.support.ports import free_ports
from tests.support.probes import ProbeTally, Scale
from tests.support.reliability import RUN_END_TYPES, assert_core_running, assert_no_stray_replies, children
from tests.support.runner_process import RunnerProcesses
from tests.support.waiting import wait_until

pytestmark = pytest.mark.reliability

HEALTH_SERVER = str(CHILDREN / "health_server.py")
TINY_LISTENER = str(CHILDREN / "tiny_listener.py")  # run with -S: fifty start quickly on two cores
# Fifty interpreters starting at once on a busy two-core machine may need more than the default 8 s to listen; the
# test is about every start being answered, not about how fast.
LAUNCH_TIMEOUT = ("--service-launch-timeout", "60")
STATUS_EVERY = 10


def collect(agent: AgentClient, wanted: Counter[str], *, timeout: float) -> list[Reply]:
    """Read until `wanted` holds (reply type -> count); more of a counted type than wanted fails at once."""
    got: Counter[str] = Counter()
    replies: list[Reply] = []
    deadline = time.monotonic() + timeout
    while any(got[kind] < count for kind, count in wanted.items()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"after {timeout:g}s: wanted {dict(wanted)}, got {dict(got)}")
        reply = agent.recv(timeout=remaining)
        replies.append(reply)
        if reply.type in wanted:
            got[reply.type] += 1
            assert got[reply.type] <= wanted[reply.type], f"one {reply.type} too many"
    return replies


def send_with_status(agent: AgentClient, requests: list[tuple[str, str]]) -> int:
    """Send the requests back to back with a `status` after every few; returns how many `status` went out."""
    sent = 0
    for index, (op, payload) in enumerate(requests, 1):
        agent.send(op, payload)
        if index % STATUS_EVERY == 0:
            agent.send("status")
            sent += 1
    return sent


def test_queued_execs_are_all_answered_in_order(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                scale: Scale) -> None:
    count = scale.pick(200, 2000)
    for attempt in probes.repeat(f"{count} exec ops queued back to back", scale.pick(1, 3)):
        with attempt:
            runner = runner_processes.start("app")
            agent = runner.agent()
            statuses = send_with_status(agent, [("exec", f"echo {i}") for i in range(count)])
            replies = collect(agent, Counter({"finished": count, "status": statuses}), timeout=300)
            runs: list[tuple[int, bytes]] = []
            stdout = b""
            for reply in replies:
                if reply.type == "stdout":
                    stdout += reply.payload
                elif reply.type in RUN_END_TYPES:
                    runs.append((json.loads(reply.payload)["exitCode"], stdout))
                    stdout = b""
            assert runs == [(0, b"%d\n" % i) for i in range(count)]
            assert_no_stray_replies(agent)
            assert_core_running(agent)
            assert runner.stop() == 0


def service_info(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "ports": [port], "protocol": "http", "options": {}}


def rows_past_starting(agent: AgentClient, wanted: set[str]) -> dict[str, dict[str, Any]]:
    def settled() -> dict[str, dict[str, Any]] | None:
        rows = children(agent)
        return rows if all(rows.get(c, {}).get("state") not in (None, "STARTING") for c in wanted) else None

    found = wait_until(settled, timeout=60, what="every service row past STARTING")
    assert found is not None
    return found


def test_many_services_started_at_once(runner_processes: RunnerProcesses, probes: ProbeTally, scale: Scale) -> None:
    count = scale.pick(50, 100)
    for attempt in probes.repeat(f"{count} services started at once", scale.pick(1, 3)):
        with attempt:
            defs = {f"svc{i:03d}": {"command": [sys.executable, "-S", TINY_LISTENER, "{ports[0]}"]}
                    for i in range(count)}
            runner = runner_processes.start("app", *LAUNCH_TIMEOUT, service_defs=defs)
            agent = runner.agent()
            ports = dict(zip(defs, free_ports(count), strict=True))
            statuses = send_with_status(agent, [("start-service", json.dumps(service_info(name, port)))
                                                for name, port in ports.items()])
            replies = collect(agent, Counter({"service-result": count, "status": statuses}), timeout=300)
            results = [json.loads(r.payload) for r in replies if r.type == "service-result"]
            assert results == [{"status": "started"}] * count, Counter(json.dumps(r) for r in results)
            # `status` reads the supervisor's last published snapshot, one supervisor turn behind the services' own
            # `started` under load (docs/architecture.md §5.5): wait for it to catch up, then check every row.
            rows = rows_past_starting(agent, {f"service:{name}" for name in ports})
            for name, port in ports.items():
                assert rows[f"service:{name}"]["state"] == "RUNNING", rows[f"service:{name}"]
                runner.remember(rows[f"service:{name}"]["pid"])
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
            assert_no_stray_replies(agent)
            assert_core_running(agent)
            assert runner.stop() == 0


def test_many_model_services_with_health_checks(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                scale: Scale) -> None:
    count = scale.pick(20, 40)
    for attempt in probes.repeat(f"{count} model services with health checks", scale.pick(1, 3)):
        with attempt:
            runner = runner_processes.start("app", *LAUNCH_TIMEOUT)
            agent = runner.agent()
            ports = dict(zip((f"model{i:02d}" for i in range(count)), free_ports(count), strict=True))
            health = {"path": "/health", "max_retries": 60, "max_wait_time": 1.0, "interval": 1.0}
            requests = [("start-model-service", json.dumps({
                "name": name, "model_path": str(runner.work_dir),
                "service": {"start_command": [sys.executable, HEALTH_SERVER, str(port)], "port": port,
                            "health_check": health}})) for name, port in ports.items()]
            statuses = send_with_status(agent, requests)
            replies = collect(agent, Counter({"model-service-result": count, "model-service-status": count,
                                              "status": statuses}), timeout=300)
            results = [json.loads(r.payload) for r in replies if r.type == "model-service-result"]
            assert results == [{"status": "started"}] * count, Counter(json.dumps(r) for r in results)
            transitions = [json.loads(r.payload) for r in replies if r.type == "model-service-status"]
            assert sorted(t["model_name"] for t in transitions) == sorted(ports)
            assert all(t["is_healthy"] for t in transitions), transitions
            rows = children(agent)
            for name, port in ports.items():
                assert rows[f"health:{name}-{port}"]["state"] == "RUNNING"
                assert rows[f"service:{name}-{port}"]["state"] == "RUNNING"
                runner.remember(rows[f"service:{name}-{port}"]["pid"])
            assert_no_stray_replies(agent, allowed=frozenset({"model-service-status"}))
            assert_core_running(agent)
            assert runner.stop() == 0
