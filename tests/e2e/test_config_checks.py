"""Bad configuration is told at start-up, one line each: an error where the runner cannot serve, a warning where it
can (docs/protocol.md §1.2, §1.3 step 3; issue 11, point 5). The real CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kernel_runner.config import RunnerConfig
from tests.support.runner_process import RunnerProcesses, runner_processes

__all__ = ["runner_processes"]  # the fixture, for the tests below

RUNNER = (sys.executable, "-m", "kernel_runner")


def start_runner(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """For configurations the runner refuses: it must exit by itself, before binding anything."""
    (tmp_path / "work").mkdir(exist_ok=True)
    argv = [*RUNNER, "app", "--bind", "127.0.0.1", "--port-in", "0", "--port-out", "0", "--no-intrinsic-services",
            "--config-dir", str(tmp_path), "--work-dir", str(tmp_path / "work"), "--service-defs-dir", str(tmp_path),
            "--user-input-socket", str(tmp_path / "input.sock"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("option", "value"), [("--port-in", "70000"), ("--port-out", "-1"),
                                               ("--term-in-port", "65536"), ("--term-out-port", "twenty")])
def test_a_port_outside_the_range_is_a_usage_error(tmp_path: Path, option: str, value: str) -> None:
    done = start_runner(tmp_path, option, value)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {option}: " in errors[0] and value in errors[0], done.stderr
    assert "binding to" not in done.stdout


def test_an_abbreviated_option_is_not_taken_for_another() -> None:
    done = subprocess.run([*RUNNER, "app", "--port", "2000"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "unrecognized arguments: --port" in done.stderr, done.stderr


@pytest.mark.parametrize("make", ["missing", "a file"])
def test_a_work_dir_that_is_not_there_stops_the_start(tmp_path: Path, make: str) -> None:
    work = tmp_path / "not-work"
    if make == "a file":
        work.write_text("")
    done = start_runner(tmp_path, "--work-dir", str(work))
    assert done.returncode == 1
    what = "does not exist" if make == "missing" else "is not a folder"
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"the work dir {work} {what} (--work-dir)" in errors[0], done.stderr
    assert "binding to" not in done.stdout and not work.is_dir()  # told, not created


def test_a_missing_runtime_and_service_defs_dir_are_warnings_and_the_runner_serves(
    runner_processes: RunnerProcesses, tmp_path: Path
) -> None:
    runtime = tmp_path / "nowhere" / "python"
    defs = tmp_path / "no-defs"
    runner = runner_processes.start("app", "--service-defs-dir", str(defs), runtime_path=str(runtime))
    with runner.agent() as agent:
        assert agent.status_reply(timeout=30).ready is True
        assert agent.run("exec", "echo still serving", timeout=30).stdout == b"still serving\n"
    assert runner.stop() == 0
    warnings = [line for line in runner.log_text().splitlines() if "WARNING" in line]
    assert len([line for line in warnings if f"the app runtime {runtime} does not exist" in line]) == 1, warnings
    assert len([line for line in warnings if f"the service-defs dir {defs} does not exist" in line]) == 1, warnings


def test_an_existing_runtime_path_is_not_warned_about(runner_processes: RunnerProcesses) -> None:
    runner = runner_processes.start("app", runtime_path=sys.executable)
    with runner.agent() as agent:
        assert agent.status_reply(timeout=30).ready is True
    assert runner.stop() == 0
    assert "runtime" not in " ".join(line for line in runner.log_text().splitlines() if "WARNING" in line)


@pytest.mark.parametrize("field", ["port_in", "port_out", "sshd_port", "ttyd_port", "term_in_port", "term_out_port"])
def test_an_embedders_config_with_a_bad_port_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a port number"):
        RunnerConfig(lang="app", **{field: 70000})  # type: ignore[arg-type]
    assert getattr(RunnerConfig(lang="app", **{field: 0}), field) == 0  # type: ignore[arg-type]
