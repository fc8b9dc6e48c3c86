"""pytest fixtures that give a test a running kernel runner and an agent client connected to it.

They need pytest, which the runner itself does not: `pip install 'kernel-runner[testing]'`. Enable them in a
project's top-level conftest.py (or with `pytest -p kernel_runner.testing`):

    pytest_plugins = ["kernel_runner.testing"]

    def test_echo(agent_client):
        assert agent_client.exec("echo hi", timeout=30).stdout == b"hi\\n"

`kernel_runner_config` decides what runs (default: an `app` runner from `RunnerConfig.for_embedding`, which touches
nothing outside its own temp folder and removes it afterwards); override that fixture to pick a language or options:

    @pytest.fixture
    def kernel_runner_config():
        return RunnerConfig.for_embedding("python", runtime_path=sys.executable)

The runner is started for each test and stopped (bounded) after it, also when the test fails.
"""

from __future__ import annotations

from collections.abc import Iterator

try:
    import pytest
except ImportError as exc:  # the runner's own install has no pytest: say which extra brings it
    raise ImportError("kernel_runner.testing needs pytest: pip install 'kernel-runner[testing]'") from exc

from kernel_runner.client import AgentClient
from kernel_runner.config import RunnerConfig
from kernel_runner.runtime.root import RunnerHandle, run

READY_TIMEOUT_S = 60.0  # start-up on a busy CI machine; `wait_ready` returns as soon as it is done
STOP_TIMEOUT_S = 10.0


@pytest.fixture
def kernel_runner_config() -> RunnerConfig:
    """What `kernel_runner` starts; override it in a conftest or a test module."""
    return RunnerConfig.for_embedding("app", shutdown_deadline_s=STOP_TIMEOUT_S)


@pytest.fixture
def kernel_runner(kernel_runner_config: RunnerConfig) -> Iterator[RunnerHandle]:
    """A runner started in this process, ready (start-up done; the kernel too where the language has one)."""
    with run(kernel_runner_config, stop_timeout=STOP_TIMEOUT_S) as handle:
        if not handle.wait_ready(READY_TIMEOUT_S, kernel=True):
            pytest.fail(f"the kernel runner was not ready within {READY_TIMEOUT_S:g} s", pytrace=False)
        yield handle


@pytest.fixture
def agent_client(kernel_runner: RunnerHandle) -> Iterator[AgentClient]:
    """An AgentClient connected to `kernel_runner`'s agent sockets, as the Backend.AI agent would be."""
    with AgentClient(port_in=kernel_runner.ports.port_in, port_out=kernel_runner.ports.port_out) as client:
        yield client


__all__ = ["agent_client", "kernel_runner", "kernel_runner_config"]
