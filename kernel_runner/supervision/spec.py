"""What the supervisor and its children share: child specs, the child context, child states and their messages.

A neutral module: the supervisor and every supervised actor import it, and it imports neither of them, so no actor
module needs the supervisor (docs/architecture.md §2).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

import attrs
import pykka

from kernel_runner.ids import ChildId
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.directory import ChildDirectory, Reject
from kernel_runner.supervision.exits import ExitReason
from kernel_runner.supervision.policy import RESTART_TYPES, Backoff, FatalRetry, IntensityLimit, RestartType
from kernel_runner.supervision.timers import Ticker

# What happens when a child gives up (more restarts than its intensity allows): it stays FATAL, visible in the
# tree, until someone starts it again; or the whole runner shuts down, because it cannot work without that child.
GiveUpAction = Literal["stay_fatal", "shut_down_runner"]
GIVE_UP_ACTIONS: tuple[GiveUpAction, ...] = ("stay_fatal", "shut_down_runner")


@attrs.frozen(kw_only=True)
class ChildContext:
    """What a child gets from its supervisor when one of its incarnations starts."""

    child_id: ChildId
    generation: int
    supervisor: pykka.ActorRef[Any]
    directory: ChildDirectory
    clock: Clock
    ticker: Ticker


@attrs.frozen(kw_only=True)
class ChildSpec:
    """How to (re)build one child and what its supervisor does when it ends (OTP's child spec, plus a few fields)."""

    child_id: ChildId
    # Called once per incarnation, in the supervisor's thread; must return quickly (start work in on_start).
    factory: Callable[[ChildContext], pykka.ActorRef[Any]]
    restart: RestartType = "permanent"
    # The grace the child gets to stop by itself; past it (plus a margin) the supervisor stops the actor.
    shutdown_s: float = 2.0
    backoff: Backoff = attrs.field(factory=Backoff)
    intensity: IntensityLimit = attrs.field(factory=IntensityLimit)
    stable_after_s: float = 3.0
    # A first incarnation that never came up is restarted like any other exit (True), or forgotten (False):
    # a service whose start was answered `failed` is not retried behind the agent's back.
    retry_failed_start: bool = True
    on_give_up: GiveUpAction = "stay_fatal"
    # When a child that gave up (and stays FATAL) is tried again: after the restart-limit window, and on demand.
    fatal_retry: FatalRetry = attrs.field(factory=FatalRetry)
    # systemd's BindsTo=: when that child is gone for good (forgotten, stopped or given up), stop this one for good.
    binds_to: ChildId | None = None
    # Higher tiers stop first at shutdown; children of one tier stop together.
    tier: int = 2
    # Answers a message for this child when no incarnation can take it (gone for good, or too many waiting).
    reject: Reject | None = None

    def problems(self) -> list[str]:
        """Why this spec cannot be supervised; the supervisor refuses a spec with any (OTP checks specs on add)."""
        found = [*self.backoff.problems(), *self.intensity.problems()]
        if not self.child_id:
            found.append("child_id must not be empty")
        if self.restart not in RESTART_TYPES:
            found.append(f"restart must be one of {', '.join(RESTART_TYPES)}, got {self.restart!r}")
        if self.on_give_up not in GIVE_UP_ACTIONS:
            found.append(f"on_give_up must be one of {', '.join(GIVE_UP_ACTIONS)}, got {self.on_give_up!r}")
        elif self.restart == "temporary" and self.on_give_up == "shut_down_runner":
            found.append("a temporary child is never restarted, so it never gives up: on_give_up='shut_down_runner' "
                         "would never act (use restart='permanent' or 'transient')")
        if self.shutdown_s < 0:
            found.append(f"shutdown_s must be >= 0, got {self.shutdown_s}")
        if self.stable_after_s < 0:
            found.append(f"stable_after_s must be >= 0, got {self.stable_after_s}")
        if self.tier < 0:
            found.append(f"tier must be >= 0, got {self.tier}")
        if self.binds_to == self.child_id:
            found.append("a child cannot be bound to itself")
        return found


class ChildState(enum.Enum):
    """The supervisor's view of a child (supervisord's names)."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"
    # Stopped for good on request: the row stays, with its last exit and extra (a service's port), until the child
    # is started again (the same spec, so the same port and options) or replaced by a new start of its id.
    STOPPED = "STOPPED"


@attrs.frozen(kw_only=True)
class ChildInfo:
    """One row of the supervision tree report."""

    child_id: ChildId
    state: ChildState
    pid: int | None
    restarts: int
    generation: int
    last_exit: str | None
    # Clock time at which the current incarnation reached RUNNING (None while it is not running).
    running_since: float | None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    # The child this one is bound to (its spec's binds_to): a health checker under its server, for nested reports.
    binds_to: ChildId | None = None

    def uptime_s(self, now: float) -> float | None:
        return None if self.running_since is None else max(0.0, now - self.running_since)


@attrs.frozen(kw_only=True)
class TreeSnapshot:
    """The whole tree as the supervisor saw it after a change; pushed to whoever reports it (no asks)."""

    version: int
    children: tuple[ChildInfo, ...]

    def get(self, child_id: ChildId) -> ChildInfo | None:
        return next((child for child in self.children if child.child_id == child_id), None)


EMPTY_TREE = TreeSnapshot(version=0, children=())

# ---------------------------------------------------------------------------------------------------------------------
# Child → supervisor
# ---------------------------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ChildExited:
    """Exactly one per incarnation (SupervisedActor guarantees it), with the reason the policy classifies."""

    child_id: ChildId
    generation: int
    reason: ExitReason


@attrs.frozen(kw_only=True)
class ChildStateChanged:
    child_id: ChildId
    generation: int
    state: ChildState
    pid: int | None = None


@attrs.frozen(kw_only=True)
class ChildInfoUpdated:
    """Child-specific figures for the tree report (health, ports, ...), merged into ChildInfo.extra."""

    child_id: ChildId
    generation: int
    extra: Mapping[str, Any]


# ---------------------------------------------------------------------------------------------------------------------
# Anyone → supervisor (commands and queries), and its answers
# ---------------------------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StartChild:
    """Add and start a child. The answer is returned to an ask, and told to `reply_to` when given."""

    spec: ChildSpec
    reply_to: pykka.ActorRef[Any] | None = None


@attrs.frozen(kw_only=True)
class Started:
    child_id: ChildId
    generation: int


@attrs.frozen(kw_only=True)
class AlreadyStarted:
    """A child with this id exists and has not given up; the new spec was not applied (OTP's already_started)."""

    child_id: ChildId
    state: ChildState


@attrs.frozen(kw_only=True)
class StartRefused:
    child_id: ChildId
    reason: str


StartAnswer = Union[Started, AlreadyStarted, StartRefused]


@attrs.frozen(kw_only=True)
class StopChild:
    """Stop a child for good: graceful stop within its spec's grace, then it is forgotten, or kept as a STOPPED row.

    `keep_row`: someone asked (an operator's `kernel-runner ctl stop`, the agent's shutdown-service): the row stays,
    STOPPED, with its last exit and port, and can be started again (supervisorctl's stop). Without it (the runner's
    own stops: a model whose start failed, a helper that failed) the child is forgotten, as a failed start is."""

    child_id: ChildId
    reason: str
    keep_row: bool = False


@attrs.frozen(kw_only=True)
class RestartChild:
    """Stop a child and let the policy decide on a restart as if it had ended with `reason` (counts to give-up).

    `by_hand`: an operator's restart (`kernel-runner ctl restart`): logged as such, started again at once, and not
    counted towards give-up (a child that gave up starts afresh); its exit is logged and shown as `reason`. Only a
    restart by hand starts a STOPPED child again (supervisorctl's restart of a stopped process)."""

    child_id: ChildId
    reason: ExitReason
    by_hand: bool = False


@attrs.frozen(kw_only=True)
class WhichChildrenQuery:
    """Ask only: the current tree as a list of ChildInfo."""


@attrs.frozen(kw_only=True)
class ShutdownTree:
    """Ask only: stop every child, highest tier first, within one deadline; the answer is a ShutdownDone."""

    grace_s: float


class ShutdownDone(threading.Event):
    """Set once every child is gone; `forced` names those whose actor the supervisor had to stop itself."""

    def __init__(self) -> None:
        super().__init__()
        self.forced: list[ChildId] = []


# ---------------------------------------------------------------------------------------------------------------------
# Supervisor → child
# ---------------------------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StopRequested:
    """Begin the child's own graceful stop within `grace_s` (see procs.stop_process), then end."""

    reason: str
    grace_s: float


__all__ = [
    "EMPTY_TREE",
    "AlreadyStarted",
    "ChildContext",
    "ChildExited",
    "ChildInfo",
    "ChildInfoUpdated",
    "ChildSpec",
    "ChildState",
    "ChildStateChanged",
    "GiveUpAction",
    "RestartChild",
    "ShutdownDone",
    "ShutdownTree",
    "StartAnswer",
    "StartChild",
    "StartRefused",
    "Started",
    "StopChild",
    "StopRequested",
    "TreeSnapshot",
    "WhichChildrenQuery",
]
