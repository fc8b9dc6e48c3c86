"""Shared fixtures: every test ends with no actor registered and no child process left behind."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pykka
import pytest
from loguru import logger

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import AgentClient
from kernel_runner.observability.logs import configure_logging

CHILDREN = Path(__file__).parent / "children"
# A folder that exists, for a model whose server runs in its model folder (docs/protocol.md §7.2).
MODEL_DIR = tempfile.gettempdir()
# The reliability suites (tests/fuzz, tests/chaos, tests/load): `--chaos` and the probe table of `make chaos`.
pytest_plugins = ("tests.support.probes",)


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging(debug=True, json_lines=False)


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    pykka_left = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(block=True, timeout=5)
    leftover = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _gone, alive = psutil.wait_procs(leftover, timeout=3)
    for proc in alive:
        proc.kill()
    assert not pykka_left, f"actors still running after the test: {pykka_left}"
    assert not alive, f"processes left behind: {[(p.pid, p.cmdline()) for p in alive if p.is_running()]}"


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every loguru line (with its bound child) written while the test runs."""
    lines: list[str] = []
    sink_id = logger.add(lambda msg: lines.append(str(msg)), format="{level} [{extra[child]}] {message}", level="DEBUG")
    yield lines
    logger.remove(sink_id)


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def runner_config(tmp_path: Path, work_dir: Path) -> RunnerConfig:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    return RunnerConfig(
        lang="app",
        config_dir=config_dir,
        work_dir=work_dir,
        service_defs_dir=tmp_path / "service-defs",
        bind="127.0.0.1",
        port_in=0,
        port_out=0,
        user_input_socket=tmp_path / "input.sock",
        start_intrinsic_services=False,
        shutdown_deadline_s=5.0,
        # Nothing the host has mounted under /opt may count as the agent's (docs/protocol.md §12.1).
        dropbear_dir=tmp_path / "no-kernel-dir",
    )


@pytest.fixture
def runner(runner_config: RunnerConfig) -> Iterator[RunnerHandle]:
    handle = start(runner_config)
    yield handle
    handle.stop(timeout=5)


@pytest.fixture
def agent(runner: RunnerHandle) -> Iterator[AgentClient]:
    with AgentClient(port_in=runner.ports.port_in, port_out=runner.ports.port_out) as client:
        yield client


@pytest.fixture
def python_exe() -> str:
    return sys.executable


def env_without_coverage() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COV_")}
