"""The fuzz suite's hypothesis profile: a fixed seed and a modest count in `make test`, >= 10 000 with --chaos."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings

FUZZ_PROFILE = "kernel-runner-fuzz"
SHORT_EXAMPLES = 300
LONG_EXAMPLES = 10_000


def pytest_configure(config: pytest.Config) -> None:
    long = bool(config.getoption("--chaos"))
    settings.register_profile(
        FUZZ_PROFILE,
        max_examples=LONG_EXAMPLES if long else SHORT_EXAMPLES,
        # make test: the same examples every run (derandomize); make chaos: a fresh seed, printed with any failure.
        derandomize=not long,
        database=None,
        deadline=None,  # each example talks to a real process: its time says nothing about the code under test
        print_blob=True,
        # No shrinking: the runner is one long-lived process, so a smaller example replayed after a failure meets a
        # runner in another state; the first failing example, as generated, is the useful report (and it ends the run).
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
