"""Fixtures shared by the integration tests of the python language in batch mode."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import attrs
import pytest

from kernel_runner import RunnerConfig, RunnerHandle
from kernel_runner.client import AgentClient
from tests.support.runner_process import runner_processes
from tests.support.runners import running

__all__ = ["py_config", "py_runner", "runner_processes"]


@pytest.fixture
def py_config(runner_config: RunnerConfig) -> RunnerConfig:
    # The python language with this interpreter as its runtime, so `*` heuristics and input() work here.
    return attrs.evolve(runner_config, lang="python", runtime_path=sys.executable)


@pytest.fixture
def py_runner(py_config: RunnerConfig) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    with running(py_config) as pair:
        yield pair
