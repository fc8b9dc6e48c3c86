"""Logging set-up: what reaches the runner's log even with --debug, and DEBUG lines only when asked for."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

import kernel_runner
from kernel_runner.observability import debug_lines
from kernel_runner.observability.logs import configure_logging


def test_aws_libraries_never_log_their_debug_lines_which_carry_credentials() -> None:
    configure_logging(debug=True, json_lines=False)
    assert logging.getLogger().level == logging.DEBUG  # --debug is on for everything else
    for name in ("boto3", "botocore", "botocore.endpoint"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name


@pytest.fixture
def seen() -> Iterator[list[str]]:
    lines: list[str] = []
    sink_id = logger.add(lambda message: lines.append(str(message)), level="DEBUG", format="{level} {message}")
    yield lines
    logger.remove(sink_id)
    debug_lines.configure(True)  # as the session's configure_logging(debug=True) left it


def test_debug_lines_are_made_only_while_someone_asked_for_them(seen: list[str]) -> None:
    log = logger.bind(child="test")
    debug_lines.configure(False)
    debug_lines.debug(log, "quiet {}", 1)
    debug_lines.log_at(log, "DEBUG", "quiet too")
    debug_lines.log_at(log, "INFO", "always {}", 2)
    first, second = debug_lines.hold(), debug_lines.hold()  # two runners with `debug` set
    debug_lines.debug(log, "loud {}", 3)
    first()
    first()  # releasing twice counts once
    debug_lines.debug(log, "still loud")
    second()
    debug_lines.debug(log, "quiet again")
    debug_lines.configure(True)
    debug_lines.debug(log, "configured")
    assert [line.strip() for line in seen] == ["INFO always 2", "DEBUG loud 3", "DEBUG still loud", "DEBUG configured"]


def test_configure_logging_switches_the_debug_lines() -> None:
    try:
        configure_logging(debug=False, json_lines=False)
        assert not debug_lines.enabled()
    finally:
        configure_logging(debug=True, json_lines=False)
    assert debug_lines.enabled()


def test_every_debug_line_of_the_package_goes_through_the_switch() -> None:
    """A `log.debug(...)` of its own would reach an embedding host's stderr (kernel_runner/observability/debug_lines.py)."""
    package = Path(kernel_runner.__file__).parent
    direct = [f"{path.relative_to(package)}:{number}" for path in sorted(package.rglob("*.py"))
              if path.name != "debug_lines.py"
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"\.debug\(|[.(]log\(\s*\"DEBUG\"", line)]
    assert direct == []
