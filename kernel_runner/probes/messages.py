"""What the probe engine tells the actor that owns it: from the ticker (a probe is due, overdue, a budget is spent)
and from a probe thread (an answer). Each names its probe (`tag`), since one actor may run several."""

from __future__ import annotations

import attrs

from kernel_runner.probes.kinds import ProbeAnswer


class ProbeMessage:
    """Any message of the engine's: an owner hands every one of them to its ProbeLoop (or ServiceProbes)."""

    tag: str


@attrs.frozen(kw_only=True)
class ProbeDue(ProbeMessage):
    """Ticker → owner: time for the next probe; a tick of an older schedule (`epoch`) is ignored."""

    tag: str
    epoch: int


@attrs.frozen(kw_only=True)
class ProbeFinished(ProbeMessage):
    """Probe thread → owner: one probe's answer."""

    tag: str
    seq: int
    answer: ProbeAnswer


@attrs.frozen(kw_only=True)
class ProbeOverdue(ProbeMessage):
    """Ticker → owner: probe `seq` has not answered within its timeouts plus a slack."""

    tag: str
    seq: int


@attrs.frozen(kw_only=True)
class StartupBudgetDue(ProbeMessage):
    """Ticker → owner: a startup probe's budget is spent (ServiceProbes)."""

    tag: str
    epoch: int


__all__ = ["ProbeDue", "ProbeFinished", "ProbeMessage", "ProbeOverdue", "StartupBudgetDue"]
