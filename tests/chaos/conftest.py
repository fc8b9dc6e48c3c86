"""Runner processes for these tests come from tests/support/runner_process.py."""

from tests.support.runner_process import runner_processes

__all__ = ["runner_processes"]
