"""Fixtures shared by the actor tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.waiting import Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """An actor that records what it is told; stopped after the test."""
    made = Recorder()
    yield made
    made.stop()
