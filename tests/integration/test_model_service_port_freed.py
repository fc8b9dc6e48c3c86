"""A model service that fails its startup check frees its port before the agent hears `failed`, so an agent that
retries at once on the same port does not collide with the old server (docs/protocol.md §7.2 step 4)."""

from __future__ import annotations

import errno
import json
import shlex
import sys
from typing import Any

import pytest

from tests.integration.test_model_service import SERVER, check, model, model_config, models  # noqa: F401 - fixtures
from tests.support.ports import connect_error, free_port
from tests.support.procs import alive, assert_gone
from tests.support.waiting import wait_until


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["stops-on-sigterm", "needs-sigkill"])
def test_the_port_is_closed_when_failed_arrives(models: Any, ignores_sigterm: bool) -> None:  # noqa: F811
    runner = models()
    port = free_port()
    # It listens at once and answers 503 to every probe: its port is open until it is stopped.
    server = [sys.executable, SERVER, str(port), "--healthy-after", "999"]
    # `trap '' TERM` before exec: the server inherits SIGTERM ignored, so only the SIGKILL after the grace ends it.
    command: list[str] | str = (f"trap '' TERM; exec {shlex.join(server)}" if ignores_sigterm else server)
    payload = model("doomed", port, health=check(max_retries=2, max_wait_time=0.5), command=command)
    runner.agent.send("start-model-service", json.dumps(payload))
    pid = runner.pid_of(f"service:doomed-{port}")
    result = runner.agent.expect("model-service-result", timeout=2 * 0.5 + 10).json()
    refused = connect_error(port)  # at once: no wait between the answer and the retry
    assert result == {"status": "failed", "error": "service unhealthy"}
    assert refused == errno.ECONNREFUSED, errno.errorcode.get(refused, refused)
    assert not alive(pid)
    # What the agent relies on holds when `failed` arrives (above); the tree forgets both children just after.
    wait_until(lambda: runner.child(f"service:doomed-{port}") is None and runner.child(f"health:doomed-{port}") is None,
               timeout=10, what="both children forgotten")
    assert_gone([pid], timeout=1)

