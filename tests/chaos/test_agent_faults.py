"""An agent that goes away or stops reading (docs/protocol.md §2.1 "Backpressure and disconnected agents").

- Output produced before any agent reads waits in the runner and arrives once the agent connects; an agent that
  disconnects mid-run and reconnects gets the rest of the output in order, once, followed by the run's one
  `finished`. (Messages already inside ZeroMQ's pipe to a connection that drops are lost with it, as with any PUSH
  socket; the test disconnects while nothing is in flight, between two rounds of the child's output.)
- An agent that stops reading while a child writes 200 MiB: the child is slowed (its pipe fills), the runner's RSS
  stays bounded, and once the agent reads again every byte arrives, in order, then one `finished`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest
import zmq

from kernel_runner.client import AgentClient
from tests.support.flood import MIB, StalledAgent, read_flood_to_the_end, wait_for_stalled_writer
from tests.support.probes import ProbeTally, Scale
from tests.support.reliability import RUN_END_TYPES, assert_core_running, assert_no_stray_replies
from tests.support.runner_process import RunnerProcess, RunnerProcesses
from tests.support.waiting import wait_until

pytestmark = pytest.mark.reliability

PAUSED_WRITER = str(Path(__file__).parent / "children" / "paused_writer.py")
# docs/architecture.md §5.6: 64 credits (16 MiB) plus ZeroMQ's 32-message queue of <= 1 MiB hold about 48 MiB; the rest is
# the margin of a busy machine (the in-process test in tests/integration/test_protocol_batch.py uses the same).
RSS_GROWTH_LIMIT = 150 * MIB


def read_stdout_exactly(agent: AgentClient, expected: bytes, *, timeout: float = 30.0) -> None:
    """Read this run's stdout until it is `expected`: a missing, repeated or reordered line fails here."""
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < len(expected):
        reply = agent.recv(timeout=max(0.0, deadline - time.monotonic()))
        assert reply.type not in RUN_END_TYPES, f"the run ended after {len(got)} of {len(expected)} bytes"
        if reply.type == "stdout":
            got += reply.payload
            assert expected.startswith(got), f"stdout diverged at byte {len(got) - len(reply.payload)}"
        elif reply.type != "status":  # a `status` a reconnecting agent sent twice may come late; nothing else may
            raise AssertionError(f"unexpected {reply.type} {reply.payload[:120]!r}")


def reconnect(runner: RunnerProcess, old: AgentClient) -> AgentClient:
    """A new agent connection that the runner is known to serve: a `status` sent on it came back on it."""
    old.close()
    new = runner.agent()

    def served() -> bool:
        new.send("status")
        try:
            new.expect("status", timeout=1.0)
        except TimeoutError:  # this status went to the connection that was closing; ask again
            return False
        return True

    wait_until(served, timeout=30, what="the runner to serve the new agent connection")
    return new


def test_agent_disconnects_mid_output_and_reconnects(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                      scale: Scale) -> None:
    rounds, lines = scale.pick(3, 10), scale.pick(2000, 50_000)
    for attempt in probes.repeat("agent disconnects mid-output and reconnects", scale.pick(1, 5)):
        with attempt:
            runner = runner_processes.start("app")
            release = runner.root / "release"
            for round_no in range(1, rounds):
                os.mkfifo(f"{release}{round_no}")
            # The op goes in through a PUSH socket alone: no agent reads while the first round is written.
            sender: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
            sender.setsockopt(zmq.LINGER, 1000)
            sender.connect(f"tcp://127.0.0.1:{runner.port_in}")
            sender.send_multipart([b"exec", f"{sys.executable} {PAUSED_WRITER} {rounds} {lines} {release}".encode()])
            sender.close()
            first_written = Path(f"{release}0.written")
            wait_until(first_written.exists, timeout=30, what="the first round written")
            agent = runner.agent()
            for round_no in range(rounds):
                if round_no:
                    agent = reconnect(runner, agent)
                    with open(f"{release}{round_no}", "wb") as pipe:  # blocks until the writer waits on it
                        pipe.write(b"go")
                read_stdout_exactly(agent, b"".join(b"%d:%d\n" % (round_no, line) for line in range(lines)))
            end = agent.collect_run(timeout=30)
            assert (end.status, end.exit_code, end.records) == ("finished", 0, ()), end
            assert_no_stray_replies(agent, allowed=frozenset({"status"}))
            assert_core_running(agent)
            assert runner.stop() == 0


def flood_through_a_stalled_agent(runner: RunnerProcess, total: int) -> None:
    progress = runner.root / "progress"
    agent = StalledAgent(runner.port_in, runner.port_out)
    try:
        agent.push.send_multipart([b"status", b""])
        assert agent.recv(timeout=30)[0] == b"status"
        before = runner.rss()
        agent.start_flood(total, progress)
        written, peak = wait_for_stalled_writer(progress, runner.rss, timeout=60)
        assert written < total, "the child was never slowed down"
        growth = peak - before
        assert growth < RSS_GROWTH_LIMIT, f"runner RSS grew by {growth / MIB:.0f} MiB while the agent was not reading"
        received = read_flood_to_the_end(agent, message_timeout=60)
        assert received == total, f"{received} of {total} bytes arrived"
        agent.push.send_multipart([b"status", b""])
        assert agent.recv(timeout=30)[0] == b"status", "a second end message or late output after `finished`"
    finally:
        agent.close()


def test_stalled_agent_slows_a_200_mib_writer_and_gets_every_byte(runner_processes: RunnerProcesses,
                                                                   probes: ProbeTally, scale: Scale) -> None:
    total = scale.pick(200, 1024) * MIB
    for attempt in probes.repeat(f"agent stops reading during a {total // MIB} MiB flood", scale.pick(1, 3)):
        with attempt:
            runner = runner_processes.start("app")
            flood_through_a_stalled_agent(runner, total)
            assert psutil.Process(runner.pid).status() != psutil.STATUS_ZOMBIE
            assert runner.stop() == 0
