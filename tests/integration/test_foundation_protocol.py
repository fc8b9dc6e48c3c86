"""The whole tree in-process, driven over real ZeroMQ sockets the way the agent drives it."""

from __future__ import annotations

import pytest

from kernel_runner import RunnerConfig, RunnerHandle, RunnerStartError, start
from kernel_runner.client import AgentClient, ReplyTimeout
from kernel_runner.ids import ChildId
from kernel_runner.supervision.spec import ChildState
from tests.support.waiting import wait_until


def test_status_reports_started_at_and_the_supervision_tree(agent: AgentClient) -> None:
    body = agent.status()
    assert isinstance(body["started_at"], float)
    assert body["kernel_runner"]["ready"] is True
    # The tree is pushed as the supervisor starts children and they report; each gets there on its own time.
    wait_until(lambda: {c["id"]: c["state"] for c in agent.status()["kernel_runner"]["children"]}
               == {"router": "RUNNING", "lang": "RUNNING", "services": "RUNNING"},
               timeout=10, what="every child RUNNING in the status tree")
    # started_at is a liveness token: stable across calls.
    assert agent.status()["started_at"] == body["started_at"]


def test_app_batch_answers_each_step_with_exit_zero(agent: AgentClient, log_lines: list[str]) -> None:
    # docs/protocol.md §8.1: app's build/exec heuristics only warn; an explicit command would really run (docs/protocol.md §5.1).
    results = agent.batch(clean="", build="*", exec="*")
    assert [(r.status, r.exit_code) for r in results] == [("clean-finished", 0), ("build-finished", 0), ("finished", 0)]
    assert any("batch-mode execution is not supported" in line for line in log_lines)


def test_app_query_finishes_with_a_clear_error(agent: AgentClient) -> None:
    result = agent.code("print(1)")
    assert result.status == "finished" and result.exit_code == 127
    assert b"query mode is not available" in result.stderr


@pytest.mark.parametrize(
    ("frames", "logged"),
    [
        ([b"status"], "expected 2 frames, got 1"),
        ([b"a", b"b", b"c"], "expected 2 frames, got 3"),
        ([b"\xff", b""], "op frame is not ASCII"),
        ([b"no-such-op", b"x"], "unknown op 'no-such-op'"),
        ([b"shutdown-service", b"{"], "not a JSON string"),
        ([b"input", b"nobody waits"], "input dropped"),
        ([b"interrupt", b""], "interrupt"),
    ],
)
def test_bad_input_is_logged_and_the_runner_keeps_serving(agent: AgentClient, frames: list[bytes], logged: str,
                                                           log_lines: list[str]) -> None:
    agent.send_frames(frames)
    assert "started_at" in agent.status()
    wait_until(lambda: any(logged in line for line in log_lines), timeout=5, what=f"a log line with {logged!r}")


def test_a_payload_that_trips_the_parser_is_answered_and_the_socket_keeps_serving(agent: AgentClient) -> None:
    agent.send("start-service", b'{"name": "x", "port": 1, "ports": 5}')
    assert agent.expect("service-result").json()["status"] == "failed"
    agent.send("start-service", b"[" * 100_000)  # nested deeper than the JSON parser goes
    assert agent.expect("service-result").json()["status"] == "failed"
    assert "started_at" in agent.status(timeout=10)


def test_bad_service_payloads_get_failed_replies(agent: AgentClient) -> None:
    agent.send("start-service", b"{broken")
    reply = agent.expect("service-result").json()
    assert reply["status"] == "failed" and "not valid JSON" in reply["error"]
    agent.send("start-model-service", b'{"name": "m", "service": {"port": 1}}')
    reply = agent.expect("model-service-result").json()
    assert reply["status"] == "failed" and "$.service.start_command" in reply["error"]


def test_complete_is_always_answered(agent: AgentClient) -> None:
    assert agent.complete("imp") == {"suggestions": []}
    agent.send("complete", b"not json")
    assert agent.expect("completion").json() == {"suggestions": []}
    for odd in (b'{"code": ["import", "os"]}', b'{"code": null}', b"[]", b""):  # each answered exactly once
        agent.send("complete", odd)
        assert agent.expect("completion").json() == {"suggestions": []}
    with pytest.raises(ReplyTimeout):
        agent.expect("completion", timeout=0.5)  # exactly one each


def test_get_apps_without_service_definitions_is_empty(agent: AgentClient) -> None:
    assert agent.get_apps() == {"status": "done", "data": []}


def test_a_crashed_router_is_restarted_on_the_same_ports(runner: RunnerHandle, agent: AgentClient) -> None:
    agent.status()
    runner.tell_child(ChildId("router"), object())  # an unknown message: logged, not fatal
    router = next(c for c in runner.which_children() if c.child_id == "router")
    assert router.generation == 1
    # A router that stops unasked (its actor ended) is restarted: it is a permanent child.
    import pykka

    from kernel_runner.actors.router.actor import RouterActor

    (router_ref,) = pykka.ActorRegistry.get_by_class(RouterActor)
    router_ref.stop(timeout=5)
    wait_until(
        lambda: any(c.child_id == "router" and c.generation == 2 and c.state is ChildState.RUNNING
                    for c in runner.which_children()),
        timeout=10,
        what="router generation 2",
    )
    assert "started_at" in agent.status(timeout=10)


def test_ports_in_use_fail_start_loudly(runner: RunnerHandle, runner_config: RunnerConfig) -> None:
    import attrs

    taken = attrs.evolve(runner_config, port_in=runner.ports.port_in, port_out=0)
    with pytest.raises(RunnerStartError, match="cannot bind"):
        start(taken)


@pytest.mark.parametrize(("mode", "kind"), [("log", "log"), ("stderr", "stderr")])
def test_forwarded_logs_reach_the_agent_only_when_asked(runner_config: RunnerConfig, mode: str, kind: str) -> None:
    import attrs

    handle = start(attrs.evolve(runner_config, forward_logs=mode))
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            agent.send("no-such-op", b"")
            for _ in range(50):  # start-up lines may come first
                text = agent.expect(kind, timeout=10).text
                if "dropped bad frame" in text:
                    break
            assert text.startswith("app-kernel: dropped bad frame (op=no-such-op") and text.endswith("\n")
    finally:
        handle.stop(timeout=5)


def test_logs_are_not_forwarded_by_default(agent: AgentClient) -> None:
    agent.send("no-such-op", b"")
    agent.status()
    agent.send("exec", b"")
    result = agent.collect_run()
    assert result.status == "finished" and not result.records
