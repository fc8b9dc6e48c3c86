"""What `status` reports, kept current without asking anyone: the start-up gate and the latest tree snapshot.

The agent reads the first `status` reply as "the runner is ready" (docs/protocol.md §1.6, §3.1), so the router
answers it only once every start-up step is done. A step whose owner gave up is released, or the agent would wait
for ever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from loguru import logger

from kernel_runner.ids import ChildId
from kernel_runner.supervision.spec import EMPTY_TREE, ChildState, TreeSnapshot

T = TypeVar("T")


class StartupGate:
    """Named start-up steps, each optionally owned by a child; open once all are done or released."""

    def __init__(self, steps: Mapping[str, ChildId | None] | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, ChildId | None] = dict(steps or {})
        self._waiters: list[Callable[[], Any]] = []
        self.log = logger.bind(child="startup")

    @property
    def is_open(self) -> bool:
        return not self._pending

    def add(self, step: str, owner: ChildId | None = None) -> None:
        with self._lock:
            self._pending[step] = owner

    def done(self, step: str) -> None:
        self._close_steps([step], "done")

    def release_owned_by(self, child_id: ChildId, why: str) -> None:
        with self._lock:
            steps = [step for step, owner in self._pending.items() if owner == child_id]
        if steps:
            self.log.error("ready without finishing {} ({}); status is answered anyway", sorted(steps), why)
            self._close_steps(steps, "released")

    def when_open(self, callback: Callable[[], Any]) -> None:
        """Run `callback` once the gate opens (at once, in this thread, if it is open already)."""
        with self._lock:
            if self._pending:
                self._waiters.append(callback)
                return
        callback()

    def _close_steps(self, steps: list[str], how: str) -> None:
        with self._lock:
            for step in steps:
                if self._pending.pop(step, "absent") != "absent":
                    self.log.info("start-up step {}: {}", how, step)
            if self._pending:
                return
            waiters, self._waiters = self._waiters, []
        if waiters:
            self.log.info("ready")
        for callback in waiters:
            callback()


class StatusBoard:
    """The supervisor's latest tree snapshot (swapped whole, so readers need no lock), and a wait for a change."""

    def __init__(self, gate: StartupGate) -> None:
        self.snapshot: TreeSnapshot = EMPTY_TREE
        self._gate = gate
        self._changed = threading.Condition()

    def wait_for(self, found: Callable[[TreeSnapshot], T | None], timeout: float,
                 *, abandon: threading.Event | None = None) -> T | None:
        """What `found` returns for the first snapshot it accepts (not None), looked at on each change; None after
        `timeout`, or once `abandon` is set (whoever sets it calls `nudge`). Nothing polls: the supervisor's
        publish wakes the waiters."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = found(self.snapshot)
                remaining = deadline - time.monotonic()
                if value is not None or remaining <= 0 or (abandon is not None and abandon.is_set()):
                    return value
                self._changed.wait(remaining)

    def nudge(self) -> None:
        """Wake every `wait_for` to look again (its `abandon` was set)."""
        with self._changed:
            self._changed.notify_all()

    def publish(self, snapshot: TreeSnapshot) -> None:
        """Called in the supervisor's thread after every change; must stay cheap."""
        with self._changed:
            self.snapshot = snapshot
            self._changed.notify_all()
        if not self._gate.is_open:
            for child in snapshot.children:
                if child.state is ChildState.FATAL:
                    self._gate.release_owned_by(child.child_id, f"{child.child_id} gave up")


__all__ = ["StartupGate", "StatusBoard"]
