"""ChildDirectory: address a supervised child by id, across its restarts, without going through the supervisor.

The supervisor keeps it current (attach on every start, detach when an incarnation ends, close when the child is
gone for good); the router and the language runner `tell` through it from any thread.

Per child id, one of three situations holds:

    attached ── a live incarnation: messages go straight into its inbox
       │  ▲
    detach  attach (flushes what was held, in order, before anything newer)
       ▼  │
    held ───── between incarnations: messages wait in order (bounded); an ending incarnation hands
       │       back what it will not do, ahead of everything that arrived after it detached
     close
       ▼
    closed ─── gone for good: every held and every later message gets the child's reject answer (a child
               that gave up may be tried again: a later message also tells the supervisor it is needed)

Rejects run outside the lock, in the caller's thread, so a reject may itself tell through the directory.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import attrs
import pykka
from loguru import logger

from kernel_runner.ids import ChildId
from kernel_runner.observability.debug_lines import debug

# Answers a message no incarnation of the child can take; the child's spec supplies it (see rejects.py).
Reject = Callable[[object], None]
# Told that a message arrived for a closed child (the supervisor: a child that gave up may be tried again).
Demand = Callable[[ChildId], None]
HELD_LIMIT = 1000


@attrs.define(eq=False)
class _Entry:
    reject: Reject | None
    ref: pykka.ActorRef[Any] | None = None
    generation: int = 0
    held: collections.deque[object] = attrs.field(factory=collections.deque)
    # How many handed-back messages sit at the front of `held` (they are older than the rest).
    handed_back: int = 0
    # The newest generation that has ended (detached itself): attaching it would deliver into a dead inbox.
    ended: int = 0
    closed_because: str | None = None
    demand: Demand | None = None


class ChildDirectory:
    """Thread-safe id → current incarnation map; no message is lost or reordered across restarts."""

    def __init__(self, *, unknown: Callable[[ChildId, object], None] | None = None, held_limit: int = HELD_LIMIT) -> None:
        self._lock = threading.Lock()
        self._entries: dict[ChildId, _Entry] = {}
        self._unknown = unknown
        self._held_limit = held_limit
        self.log = logger.bind(child="directory")

    def set_unknown(self, unknown: Callable[[ChildId, object], None]) -> None:
        """Who answers messages for ids nobody registered (set once, while the tree is built)."""
        self._unknown = unknown

    # ---- the supervisor's side ------------------------------------------------------------------------------------
    def register(self, child_id: ChildId, reject: Reject | None) -> None:
        """A child the supervisor now owns (or owns again after it was closed): messages are held until attach."""
        with self._lock:
            entry = self._entries.get(child_id)
            if entry is None or entry.closed_because is not None:
                self._entries[child_id] = _Entry(reject=reject)
            else:
                entry.reject = reject

    def attach(self, child_id: ChildId, generation: int, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            entry = self._entries.setdefault(child_id, _Entry(reject=None))
            entry.generation, entry.handed_back, entry.closed_because, entry.demand = generation, 0, None, None
            entry.ref = ref if generation > entry.ended else None  # it may have ended already (a failed start)
            while entry.held and entry.ref is not None:
                try:
                    ref.tell(entry.held[0])  # still under the lock: nothing newer can overtake these
                except pykka.ActorDeadError:
                    entry.ref = None  # it ended meanwhile; its exit report decides where the rest goes
                    break
                entry.held.popleft()

    def detach(self, child_id: ChildId, generation: int) -> None:
        """The incarnation is ending (idempotent): hold new messages for the next one."""
        with self._lock:
            entry = self._entries.get(child_id)
            if entry is None:
                return
            entry.ended = max(entry.ended, generation)
            if entry.generation == generation and entry.ref is not None:
                entry.ref, entry.handed_back = None, 0

    def close(self, child_id: ChildId, why: str, *, demand: Demand | None = None) -> None:
        """Gone for good (gave up, stopped, forgotten): reject what is held and everything that comes later.

        `demand` is called (after the reject, in the sender's thread) for each later message: the child is needed.
        """
        with self._lock:
            entry = self._entries.get(child_id)
            if entry is None:
                return
            entry.ref, entry.closed_because, entry.handed_back, entry.demand = None, why, 0, demand
            held, entry.held = list(entry.held), collections.deque()
        for message in held:
            self._reject(child_id, entry.reject, message, why)

    # ---- an ending incarnation's side -------------------------------------------------------------------------------
    def hand_back(self, child_id: ChildId, generation: int, message: object) -> None:
        """Work the ending incarnation will not do goes to the next one, ahead of anything told since it detached."""
        with self._lock:
            entry = self._entries.get(child_id)
            if entry is not None and entry.closed_because is None:
                if entry.generation == generation:
                    entry.ref = None  # an incarnation that hands work back has ended, detached or not
                    entry.held.insert(entry.handed_back, message)
                    entry.handed_back += 1
                    return
                if entry.ref is not None and entry.generation > generation:
                    try:
                        entry.ref.tell(message)  # the next incarnation is up already
                        return
                    except pykka.ActorDeadError:
                        entry.ref = None
        self.tell(child_id, message)

    # ---- everyone's side --------------------------------------------------------------------------------------------
    def tell(self, child_id: ChildId, message: object) -> None:
        demand: Demand | None = None
        with self._lock:
            entry = self._entries.get(child_id)
            if entry is not None and entry.closed_because is None:
                if entry.ref is not None:
                    try:
                        entry.ref.tell(message)
                        return
                    except pykka.ActorDeadError:
                        # It died without detaching (a crash); its exit report is on the way to the supervisor.
                        entry.ref, entry.handed_back = None, 0
                if len(entry.held) < self._held_limit:
                    entry.held.append(message)
                    return
                why = f"{len(entry.held)} messages are already waiting for it"
            else:
                why = entry.closed_because if entry is not None and entry.closed_because else "no such child"
                demand = entry.demand if entry is not None else None
        self._reject(child_id, entry.reject if entry is not None else None, message, why)
        if demand is not None:
            demand(child_id)

    def ref(self, child_id: ChildId) -> pykka.ActorRef[Any] | None:
        """The live incarnation, if any (for introspection and last-resort stops; never cache it)."""
        with self._lock:
            entry = self._entries.get(child_id)
            return entry.ref if entry is not None else None

    def live_refs(self) -> list[pykka.ActorRef[Any]]:
        with self._lock:
            return [entry.ref for entry in self._entries.values() if entry.ref is not None]

    def _reject(self, child_id: ChildId, reject: Reject | None, message: object, why: str) -> None:
        debug(self.log, "{} cannot take {} ({}); rejected", child_id, type(message).__name__, why)
        if reject is not None:
            reject(message)
        elif self._unknown is not None:
            self._unknown(child_id, message)
        else:
            self.log.warning("{} cannot take {} ({}); dropped", child_id, type(message).__name__, why)


__all__ = ["HELD_LIMIT", "ChildDirectory", "Demand", "Reject"]
