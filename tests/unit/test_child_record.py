"""The supervisor's record of a child (docs/architecture.md §3.2): its state changes only along CHILD_EDGES, and
each lifecycle event (docs/operations.md §2) comes out of its one transition function, once, with its fields."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from kernel_runner.ids import ChildId
from kernel_runner.supervision.actor import InvalidTransition
from kernel_runner.supervision.exits import Crashed, ShutdownExit
from kernel_runner.supervision.record import CHILD_EDGES, ChildRecord
from kernel_runner.supervision.spec import ChildSpec, ChildState

S = ChildState


def not_a_factory(ctx: object) -> Any:
    raise AssertionError("the record never starts an actor itself")


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        seen.append({**record["extra"], "level": record["level"].name, "message": record["message"]})

    sink_id = logger.add(sink, level="DEBUG", filter=lambda r: r["extra"].get("child") == "rec")
    yield seen
    logger.remove(sink_id)


@pytest.fixture
def record() -> ChildRecord:
    return ChildRecord(ChildSpec(child_id=ChildId("rec"), factory=not_a_factory), random.Random(1),
                       log=logger.bind(child="rec"))


def test_every_state_has_its_edges_and_the_ends_lead_only_to_a_new_start() -> None:
    assert set(CHILD_EDGES) == set(ChildState)
    assert CHILD_EDGES[S.STOPPED] == {S.STARTING}
    assert CHILD_EDGES[S.FATAL] == {S.STARTING, S.STOPPED}
    assert S.RUNNING not in CHILD_EDGES[S.EXITED], "an ended incarnation never runs again: a new one starts"


def test_a_life_logs_one_event_per_transition_with_its_fields(record: ChildRecord, events: list[dict[str, Any]]) -> None:
    assert record.start_incarnation() == 1
    record.reported(S.RUNNING, 4242, now=10.0)
    record.reported(S.RUNNING, 4242, now=11.0)  # nothing new: no event
    reason = record.exited(Crashed(error="boom"), uptime_s=record.uptime_s(12.5), shutting_down=False)
    assert reason == Crashed(error="boom") and record.state is S.EXITED and record.ref is None
    lifecycle = [e for e in events if "event" in e]
    assert [e["event"] for e in lifecycle] == ["starting", "spawned", "running", "exited"]
    assert lifecycle[1]["pid"] == 4242 and lifecycle[2]["generation"] == 1
    exited = lifecycle[3]
    assert (exited["pid"], exited["uptime_s"], exited["reason"], exited["level"]) == (4242, 2.5, "crashed", "WARNING")
    assert "not expected" in exited["message"]


def test_an_edge_the_table_lacks_is_a_bug(record: ChildRecord) -> None:
    record.start_incarnation()
    with pytest.raises(InvalidTransition, match="STARTING -> FATAL"):
        record.to(S.FATAL)
    assert record.state is S.STARTING
    record.exited(ShutdownExit(), uptime_s=None, shutting_down=True)
    with pytest.raises(InvalidTransition, match="EXITED -> RUNNING"):
        record.to(S.RUNNING)


def test_a_state_no_incarnation_reports_is_ignored_with_a_warning(record: ChildRecord,
                                                                   events: list[dict[str, Any]]) -> None:
    record.start_incarnation()
    record.reported(S.RUNNING, None, now=1.0)
    record.reported(S.STOPPED, None, now=2.0)  # only the supervisor decides that a child is STOPPED
    assert record.state is S.RUNNING
    assert any(e["level"] == "WARNING" and "reported STOPPED while RUNNING: ignored" in e["message"] for e in events)


def test_once_a_stop_was_asked_for_the_child_stays_stopping(record: ChildRecord) -> None:
    record.start_incarnation()
    record.to(S.STOPPING)
    record.stop = "stop"
    record.reported(S.RUNNING, 7, now=1.0)
    assert record.state is S.STOPPING and record.ran and record.pid == 7
