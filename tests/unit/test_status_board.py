"""StatusBoard.wait_for: waiters wake on the supervisor's publish, not on a timer (docs/architecture.md §5.5)."""

from __future__ import annotations

import threading

import pytest

from kernel_runner.ids import ChildId
from kernel_runner.supervision.spec import ChildInfo, ChildState, TreeSnapshot
from kernel_runner.wire.status import StartupGate, StatusBoard

pytestmark = pytest.mark.timeout(30)


def tree(version: int, state: ChildState) -> TreeSnapshot:
    child = ChildInfo(child_id=ChildId("kernel"), state=state, pid=None, restarts=0, generation=1, last_exit=None,
                      running_since=None)
    return TreeSnapshot(version=version, children=(child,))


def kernel_running(snapshot: TreeSnapshot) -> int | None:
    child = snapshot.get(ChildId("kernel"))
    return snapshot.version if child is not None and child.state is ChildState.RUNNING else None


def test_a_waiter_gets_the_first_snapshot_it_accepts_when_it_is_published() -> None:
    board = StatusBoard(StartupGate())
    board.publish(tree(1, ChildState.STARTING))
    got: list[int | None] = []
    waiting = threading.Thread(target=lambda: got.append(board.wait_for(kernel_running, timeout=20)))
    waiting.start()
    board.publish(tree(2, ChildState.STARTING))  # not yet: the waiter looks and goes on waiting
    board.publish(tree(3, ChildState.RUNNING))
    waiting.join(timeout=20)
    assert got == [3]


def test_a_wait_ends_with_none_at_its_timeout_or_once_abandoned() -> None:
    board = StatusBoard(StartupGate())
    assert board.wait_for(kernel_running, timeout=0.05) is None
    abandon = threading.Event()
    got: list[int | None] = []
    waiting = threading.Thread(target=lambda: got.append(board.wait_for(kernel_running, timeout=20,
                                                                         abandon=abandon)))
    waiting.start()
    abandon.set()
    board.nudge()
    waiting.join(timeout=20)
    assert not waiting.is_alive() and got == [None]
    board.publish(tree(4, ChildState.RUNNING))
    assert board.wait_for(kernel_running, timeout=0) == 4  # an accepted snapshot answers at once
