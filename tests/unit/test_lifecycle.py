"""A PhasedActor's declared life (docs/architecture.md §3.4): a table that leaves a phase out is refused on import."""

from __future__ import annotations

import enum

import pytest

from kernel_runner.supervision.actor import Lifecycle
from kernel_runner.supervision.spec import ChildState


class Light(enum.Enum):
    OFF = "off"
    ON = "on"
    BROKEN = "broken"


def test_a_lifecycle_that_names_every_phase_is_taken() -> None:
    life = Lifecycle(
        initial=Light.OFF,
        transitions={Light.OFF: frozenset({Light.ON}), Light.ON: frozenset({Light.OFF, Light.BROKEN}),
                     Light.BROKEN: frozenset()},
        child_states={Light.OFF: ChildState.STARTING, Light.ON: ChildState.RUNNING, Light.BROKEN: None},
    )
    assert life.transitions[Light.ON] == {Light.OFF, Light.BROKEN}


@pytest.mark.parametrize("left_out", ["transitions", "child_states"])
def test_a_phase_left_out_of_a_table_is_refused(left_out: str) -> None:
    transitions = {Light.OFF: frozenset({Light.ON}), Light.ON: frozenset({Light.BROKEN}), Light.BROKEN: frozenset()}
    states: dict[Light, ChildState | None] = {Light.OFF: ChildState.STARTING, Light.ON: ChildState.RUNNING,
                                              Light.BROKEN: None}
    if left_out == "transitions":
        del transitions[Light.BROKEN]
    else:
        del states[Light.BROKEN]
    with pytest.raises(ValueError, match="must name every phase"):
        Lifecycle(initial=Light.OFF, transitions=transitions, child_states=states)


def test_an_edge_to_something_that_is_not_a_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="must name every phase"):
        Lifecycle(
            initial=Light.OFF,
            transitions={Light.OFF: frozenset({ChildState.RUNNING}), Light.ON: frozenset(),  # type: ignore[arg-type]
                         Light.BROKEN: frozenset()},
            child_states={Light.OFF: None, Light.ON: None, Light.BROKEN: None},
        )
