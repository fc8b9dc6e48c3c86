"""Logging set-up: what reaches the runner's log even with --debug."""

from __future__ import annotations

import logging

from kernel_runner.logs import configure_logging


def test_aws_libraries_never_log_their_debug_lines_which_carry_credentials() -> None:
    configure_logging(debug=True, json_lines=False)
    assert logging.getLogger().level == logging.DEBUG  # --debug is on for everything else
    for name in ("boto3", "botocore", "botocore.endpoint"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
