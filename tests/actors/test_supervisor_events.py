"""The supervisor's lifecycle events (docs/operations.md §2): one per transition, flat fields, an exit logged once,
and a restart by hand that does not count towards give-up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from kernel_runner.ids import ChildId
from kernel_runner.supervision.exits import RestartRequested
from kernel_runner.supervision.policy import IntensityLimit
from kernel_runner.supervision.spec import ChildState, RestartChild, StopChild
from tests.actors.test_supervisor import Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tree() -> Iterator[Harness]:
    t = Harness()
    yield t
    t.close()


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """The `extra` of every lifecycle record (those with an `event` field), plus its level and message."""
    seen: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        seen.append({**record["extra"], "level": record["level"].name, "message": record["message"]})

    sink_id = logger.add(sink, level="DEBUG", filter=lambda r: "event" in r["extra"])
    yield seen
    logger.remove(sink_id)


def of(events: list[dict[str, Any]], child: str) -> list[dict[str, Any]]:
    return [event for event in events if event["child"] == child]


def names(events: list[dict[str, Any]], child: str) -> list[str]:
    return [event["event"] for event in of(events, child)]


def test_a_crash_is_starting_running_exited_backoff_starting(tree: Harness, events: list[dict[str, Any]]) -> None:
    tree.start(tree.spec("a"))
    tree.started("a", 1)
    tree.state_of("a", ChildState.RUNNING)
    tree.tell_child("a", "crash")
    tree.started("a", 2)
    wait_until(lambda: names(events, "a").count("running") == 2, timeout=5, what="a running again")
    assert names(events, "a") == ["starting", "spawned", "running", "exited", "backoff",
                                  "starting", "spawned", "running"]
    exited = of(events, "a")[3]
    assert exited["reason"] == "crashed" and exited["generation"] == 1 and exited["pid"] == 1001
    assert exited["level"] == "WARNING" and "not expected" in exited["message"]
    backoff = of(events, "a")[4]
    assert backoff["attempt"] == 1 and 0 <= backoff["delay_s"] <= 0.05
    assert of(events, "a")[5]["generation"] == 2 and of(events, "a")[6]["pid"] == 1002


def test_a_stop_by_request_is_one_expected_exit_then_stopped(tree: Harness, events: list[dict[str, Any]]) -> None:
    tree.start(tree.spec("a"))
    tree.started("a", 1)
    tree.supervisor.tell(StopChild(child_id=ChildId("a"), reason="test", keep_row=True))
    tree.state_of("a", ChildState.STOPPED)
    assert names(events, "a")[-3:] == ["stopping", "exited", "stopped"]
    exited = of(events, "a")[-2]
    assert exited["reason"] == "shutdown" and exited["level"] == "INFO" and "(expected)" in exited["message"]
    assert names(events, "a").count("exited") == 1


def test_restarts_by_hand_do_not_count_towards_give_up(tree: Harness, events: list[dict[str, Any]]) -> None:
    tree.start(tree.spec("a", intensity=IntensityLimit(max_restarts=1, period_s=60)))
    tree.started("a", 1)
    for generation in (2, 3, 4):  # three restarts by hand where one automatic restart is allowed
        tree.supervisor.tell(RestartChild(child_id=ChildId("a"), reason=RestartRequested(why="by hand (test)"),
                                          by_hand=True))
        tree.started("a", generation)
    info = tree.state_of("a", ChildState.RUNNING)
    assert info.generation == 4 and info.restarts == 3
    assert info.last_exit == "restart requested: by hand (test)"
    assert names(events, "a").count("restarted-by-hand") == 3
    exits = [event for event in of(events, "a") if event["event"] == "exited"]
    assert [event["reason"] for event in exits] == ["restart-requested"] * 3, "the operator's restart, not a shutdown"
    assert "restart requested: by hand (test)" in exits[0]["message"] and exits[0]["level"] == "INFO"
    assert "backoff" not in names(events, "a") and "fatal" not in names(events, "a")
    # The restart-limit window is untouched: the first crash is still restarted, the second gives up.
    tree.tell_child("a", "crash")
    tree.started("a", 5)
    tree.tell_child("a", "crash")
    tree.state_of("a", ChildState.FATAL)
    assert names(events, "a")[-2:] == ["exited", "fatal"]
