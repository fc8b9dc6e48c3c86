"""Nothing the agent's socket delivers can hurt the runner (docs/protocol.md §2.7): real runner, real ZeroMQ sockets.

Every test sends what once raised in the socket's thread, got no reply, or reached a timer unchecked, and then checks
that the runner still answers `status` and still runs a command.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from kernel_runner import RunnerHandle
from kernel_runner.client import AgentClient, ReplyTimeout, RunResult
from kernel_runner.wire import frames as wire
from tests.support.ports import free_port
from tests.support.waiting import wait_until


def still_serving(agent: AgentClient) -> None:
    assert "started_at" in agent.status()
    result = agent.run("exec", "echo still-here", timeout=20)
    assert (result.exit_code, result.stdout) == (0, b"still-here\n")


def service_reply(agent: AgentClient, payload: bytes) -> dict[str, Any]:
    agent.send("start-service", payload)
    reply: dict[str, Any] = agent.expect("service-result").json()
    return reply


@pytest.mark.parametrize("ports", ["5", "true", "1.5"])
def test_ports_that_are_not_a_list_get_a_failed_reply(agent: AgentClient, ports: str) -> None:
    reply = service_reply(agent, f'{{"name": "x", "port": 1, "ports": {ports}}}'.encode())
    assert reply["status"] == "failed"
    assert "ports must be a list of integers" in reply["error"] and "@ $.ports" in reply["error"]
    still_serving(agent)


@pytest.mark.parametrize("depth", [1000, 200_000])
def test_deep_nesting_is_refused_before_parsing(agent: AgentClient, depth: int) -> None:
    reply = service_reply(agent, b"[" * depth)
    assert reply == {"status": "failed", "error": "invalid start-service payload: payload nests deeper than 32 levels"}
    agent.send("start-model-service", b'{"name": "m", "x": ' + b"[" * depth + b"]" * depth + b"}")
    model = agent.expect("model-service-result").json()
    assert model["status"] == "failed" and "nests deeper than 32 levels" in model["error"]
    still_serving(agent)


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00", b"{}", b"[" * 1000, b"x" * (2 * 1024 * 1024)])
def test_status_is_answered_whatever_its_payload(agent: AgentClient, payload: bytes) -> None:
    agent.send("status", payload)
    assert b"started_at" in agent.expect("status").payload
    still_serving(agent)


def test_a_control_frame_over_its_limit_is_answered_with_the_limit(agent: AgentClient) -> None:
    size = wire.MAX_CONTROL_PAYLOAD_BYTES + 1
    reply = service_reply(agent, b" " * size)
    assert reply == {"status": "failed",
                     "error": f"payload of {size} bytes is over the 1 MiB limit for start-service"}
    agent.send("complete", b" " * (wire.MAX_COMPLETE_PAYLOAD_BYTES + 1))
    assert agent.expect("completion").json() == {"suggestions": []}
    still_serving(agent)


def frame_limit_hints(log_lines: list[str]) -> list[str]:
    return [line for line in log_lines if "64 MiB" in line]


def test_a_frame_over_the_socket_limit_costs_only_that_connection(agent: AgentClient, log_lines: list[str]) -> None:
    agent.send("code", b"x" * (wire.MAX_FRAME_BYTES + 1))
    hints = wait_until(lambda: frame_limit_hints(log_lines), timeout=30, what="the log line naming the frame limit")
    assert hints[0].startswith("WARNING [router] a peer of the input socket was dropped"), hints
    still_serving(agent)  # the client's socket reconnects by itself, as the agent's does


def test_a_routine_disconnect_says_nothing_of_the_frame_limit(runner: RunnerHandle, log_lines: list[str]) -> None:
    def disconnects() -> int:
        return sum("disconnected" in line for line in log_lines if line.startswith("DEBUG [router]"))

    for number in range(1, 4):  # each one connects, asks, and goes away, as `kernel-runner client` does
        with AgentClient(port_in=runner.ports.port_in, port_out=runner.ports.port_out) as client:
            assert "started_at" in client.status(timeout=30)
        # Both of its connections gone before the next one comes (separate processes are that far apart anyway).
        wanted = 2 * number
        wait_until(lambda wanted=wanted: disconnects() >= wanted, timeout=30, what="the client's two disconnects")
    assert frame_limit_hints(log_lines) == []


def test_unknown_ops_are_logged_briefly(agent: AgentClient, log_lines: list[str]) -> None:
    agent.send_frames([b"x" * (1024 * 1024), b""])
    agent.send_frames([b"no-such-op", b"y" * (1024 * 1024)])
    still_serving(agent)
    dropped = wait_until(lambda: [line for line in log_lines if "dropped bad frame" in line and "no-such-op" in line],
                         timeout=5, what="the unknown op's log line")
    assert all(len(line) < 400 for line in log_lines), max(log_lines, key=len)[:400]
    assert "unknown op 'no-such-op'" in dropped[0]


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("max_wait_time", "Infinity", "at most 600 s"),
        ("max_wait_time", "9.3e9", "at most 600 s"),
        ("interval", "1e10", "at most 3600 s"),
        ("interval", "NaN", "at least 0 and at most 3600 s"),
        ("initial_delay", "Infinity", "at most 86400 s"),
        ("initial_delay", "-1", "at least 0"),
    ],
)
def test_health_check_durations_never_reach_a_timer(agent: AgentClient, field: str, value: str, limit: str) -> None:
    port = free_port()
    payload = ('{"name": "m", "service": {"start_command": ["sleep", "60"], "port": ' + str(port) +
               ', "health_check": {"path": "/", "' + field + '": ' + value + "}}}")
    agent.send("start-model-service", payload)
    reply = agent.expect("model-service-result").json()
    assert reply["status"] == "failed"
    assert f"{field} must be" in reply["error"] and limit in reply["error"]
    assert f"@ $.service.health_check.{field}" in reply["error"]
    still_serving(agent)


def test_a_template_cannot_reach_the_runners_objects(runner: RunnerHandle, agent: AgentClient) -> None:
    port = free_port()
    model = {"name": "m", "service": {"start_command": ["echo", "{ports.__class__}"], "port": port}}
    reply = agent.start_model_service(model, timeout=10)
    assert reply["status"] == "failed"
    assert "{ports.__class__}: attribute access is not allowed" in reply["error"]
    assert "$.service.start_command[1]" in reply["error"] and "<class" not in reply["error"]
    assert not any(c.child_id.startswith("service:m-") for c in runner.which_children())
    still_serving(agent)


# ---- the agent-side client (docs/protocol.md §3.3: the agent keeps other replies for their own readers) ---------


def _in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    """Runs `call` in a helper thread, so a client that spins makes the test fail instead of hang."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # handed to the test to assert on
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def stash_a_status_reply(agent: AgentClient) -> None:
    """Leaves exactly one `status` reply kept in the client: it is answered before the get-apps that follows it."""
    agent.status()  # the runner is ready, so the next status is answered at once
    agent.send("status")
    agent.send("get-apps", "")
    agent.expect("apps-result")


def test_a_kept_reply_does_not_make_a_run_spin(agent: AgentClient) -> None:
    stash_a_status_reply(agent)
    thread, outcome = _in_thread(lambda: agent.run("exec", "echo hi", timeout=20))
    thread.join(timeout=30)
    assert not thread.is_alive(), "collect_run never returned"
    (result,) = outcome
    assert isinstance(result, RunResult) and (result.exit_code, result.stdout) == (0, b"hi\n")
    assert b"started_at" in agent.expect("status", timeout=5).payload  # still kept for its own reader


def test_every_wait_ends_at_its_deadline_even_with_kept_replies(agent: AgentClient) -> None:
    stash_a_status_reply(agent)
    thread, outcome = _in_thread(lambda: agent.collect_run(timeout=0.5))
    thread.join(timeout=30)
    assert not thread.is_alive(), "collect_run did not give up at its deadline"
    (error,) = outcome
    assert isinstance(error, ReplyTimeout)
    with pytest.raises(ReplyTimeout):
        agent.expect("completion", timeout=0.2)
    assert b"started_at" in agent.recv(timeout=5).payload  # recv gives kept replies first


def test_a_payload_that_is_json_but_not_an_object_is_answered(agent: AgentClient) -> None:
    reply = service_reply(agent, json.dumps(["name", "x"]).encode())
    assert reply == {"status": "failed", "error": "invalid start-service payload: payload must be a JSON object, got list"}
