"""Each Backend.AI agent generation, as a stand-in (tests/support/agents.py), against a runner set to its row.

The scenarios are those where the generations differ (docs/protocol.md §7): a model without a health check, one
whose health check is off and that takes 12 s to come up, one still loading after its start-up budget, one whose
server has no health endpoint, a probe interval of 0, an app that opens its port after 12 s (longer than a 10 s
agent waits), completion and the `event` op. Then how the runner picks the row by itself: one test per piece of
start-up evidence and per payload shape, and the setting through the environment with a real runner process.

Real runners, real model servers and apps (tests/children), real ports.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.client import AgentClient
from tests.conftest import CHILDREN
from tests.support.agents import (
    FAILED,
    GENERATIONS,
    KERNEL_DESTROYED,
    ROW_REPRESENTATIVES,
    RUNNING,
    STARTED,
    Command,
    Generation,
    StandInAgent,
    StatusHandling,
    model_payload,
)
from tests.support.ports import free_ports, refused
from tests.support.runner_process import RunnerProcesses
from tests.support.waiting import wait_until

SERVER = str(CHILDREN / "health_server.py")
LISTENER = str(CHILDREN / "listener.py")
# Longer than a 10 s agent waits for a service-result, well within the 30 s a 35 s agent's runner may wait.
SLOW_APP_DELAY_S = 12.0
SLOW_APP = {"command": [sys.executable, LISTENER, "{ports[0]}", "--delay", str(SLOW_APP_DELAY_S)]}
# Bounds for things that take a few seconds on an idle machine; generous for a busy one.
SETTLE_S = 60.0


def write_slow_app(defs_dir: Path) -> None:
    defs_dir.mkdir(parents=True, exist_ok=True)
    (defs_dir / "slowapp.json").write_text(json.dumps(SLOW_APP))


@attrs.define
class Kernel:
    handle: RunnerHandle
    agent: StandInAgent

    def child(self, child_id: str) -> dict[str, Any] | None:
        rows = self.agent.status()["kernel_runner"]["children"] or []
        return next((row for row in rows if row["id"] == child_id), None)

    def pid(self, child_id: str) -> int:
        def running() -> int | None:
            row = self.child(child_id)
            return row["pid"] if row and row.get("pid") else None

        found = wait_until(running, timeout=SETTLE_S, what=f"{child_id} with a pid")
        assert found is not None
        return found


class Kernels:
    """Runners set to an agent generation, each driven by that generation's stand-in; all stop at the test's end."""

    def __init__(self, base: RunnerConfig) -> None:
        self.base = base
        self.made: list[Kernel] = []

    def start(self, release: str, *, setting: str | None = None, **fields: Any) -> Kernel:
        """A runner whose setting is `setting` (default: `release` itself, pinned), driven by `release`'s agent."""
        write_slow_app(self.base.service_defs_dir)
        # Rows before 24.12 send no `interval`: the runner's default period, short here so probing tests take seconds.
        # RunnerConfig.agent_generation is new with the agent-generation contract.
        config = attrs.evolve(self.base, agent_generation=setting or release, model_probe_interval_s=0.5, **fields)
        handle = start(config)
        client = AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out)
        kernel = Kernel(handle=handle, agent=StandInAgent(GENERATIONS[release], client))
        self.made.append(kernel)
        return kernel

    def close(self) -> None:
        for kernel in self.made:
            kernel.agent.close()
            kernel.handle.stop(timeout=5)


@pytest.fixture
def kernels(runner_config: RunnerConfig, tmp_path: Path) -> Iterator[Kernels]:
    # No mount evidence from this machine: the folders the runner looks at for it are empty ones.
    empty = tmp_path / "nothing-mounted"
    empty.mkdir()
    base = attrs.evolve(runner_config, dropbear_dir=empty, ttyd_path=empty / "ttyd")
    made = Kernels(base)
    yield made
    made.close()


def health(generation: Generation, **fields: Any) -> dict[str, Any]:
    """A health_check section with the fields given, leaving out those this generation's schema does not know."""
    return {key: value for key, value in {"path": "/health", **fields}.items()
            if generation.schema.knows(key)}


def model(name: str, port: int, models_dir: Path, *server_args: str, check: dict[str, Any] | None = None,
          **service: Any) -> dict[str, Any]:
    """One model of model-definition.yml as a user writes it; the server is health_server.py on `port`."""
    model_path = models_dir / name
    model_path.mkdir(parents=True, exist_ok=True)
    section: dict[str, Any] = {"start_command": [sys.executable, SERVER, str(port), *server_args], "port": port,
                               **service}
    if check is not None:
        section["health_check"] = check
    return {"name": name, "model_path": str(model_path), "service": section}


def expect_chosen(agent: StandInAgent, *, pinned: bool) -> dict[str, Any]:
    generation = agent.generation
    chosen = agent.runner_generation()
    assert chosen["pinned"] is pinned, chosen
    assert chosen["row"] == generation.row and chosen["contract"] == generation.contract, (generation.release, chosen)
    return chosen


# ---- the scenarios where the generations differ, per row -----------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("release", ROW_REPRESENTATIVES)
def test_models_and_a_slow_app_as_each_generation_reads_them(kernels: Kernels, tmp_path: Path, release: str) -> None:
    kernel = kernels.start(release)
    agent, generation, schema = kernel.agent, GENERATIONS[release], GENERATIONS[release].schema
    expect_chosen(agent, pinned=True)
    assert "slowapp" in agent.create_kernel()
    models_dir = tmp_path / "models"
    app_port, plain_port, loading_port, headless_port, warming_port, tight_port, bare_port = free_ports(7)

    # The slow app first: its wait runs while the models start (the agent's reader stamps the reply's arrival).
    slow_app = agent.begin_service("slowapp", app_port)

    plain = agent.start_model(model("plain", plain_port, models_dir))
    # Probed; healthy only 6 s after its port opens: longer than the start-up budget (2 s, +1 s grace if known).
    loading = agent.start_model(model("loading", loading_port, models_dir, "--healthy-after", "6", check=health(
        generation, max_retries=2, max_wait_time=1.0, interval=0.5, initial_delay=1.0, enable=True)))
    # Probed, but the server answers 404 on every path but /elsewhere (no grace: initial_delay defaults to 60 s).
    headless = agent.start_model(model("headless", headless_port, models_dir, "--path", "/elsewhere", check=health(
        generation, max_retries=1, max_wait_time=1.0, interval=0.3, initial_delay=0, enable=True)))
    warming = tight = bare = None
    if schema.enable:  # health check off (also the default), and a server that opens its port only after 12 s
        warming = agent.start_model(model("warming", warming_port, models_dir, "--listen-after", "12",
                                          check=health(generation, enable=False, max_retries=2, max_wait_time=1.0)))
    if schema.interval:
        tight = agent.start_model(model("tight", tight_port, models_dir, check=health(
            generation, interval=0, max_retries=2, max_wait_time=1.0, enable=True)))
    if schema.command is Command.STRING:  # no shell: the command string is split shell-style
        bare = agent.start_model(model("bare", bare_port, models_dir, shell=None))

    if generation.contract == "verdict":
        # Today's behaviour (docs/protocol.md §7.2): the reply waits for the port or the start-up health check.
        assert plain.outcome == STARTED, plain
        assert loading.reply == {"status": "failed", "error": "service unhealthy"}, loading
        assert headless.reply == {"status": "failed", "error": "service unhealthy"}, headless
        if generation.release == "23.03.11":  # the verdict is the route's health, once
            assert agent.routes == {"plain": True, "loading": False, "headless": False}
        else:  # 23.03.5 ignores the reply
            assert agent.routes == {}
    else:
        started = [m for m in (plain, loading, headless, warming, tight, bare) if m is not None]
        for start_ in started:  # a reply at spawn, well within every agent's wait
            assert start_.outcome == STARTED and start_.took_s < start_.wait_s, start_
        if warming is not None:  # the 26.7 agent waits 10 s only: the reply must not wait for the server
            assert warming.wait_s == (10.0 if generation.reply_wait_needs_enable else 12.0), warming
            assert warming.took_s < 10.0, warming
        assert agent.destroyed == []
        # The messages, whether or not this agent reads them (25.12+ ignores them).
        agent.wait_status_message("plain", True, timeout=SETTLE_S)
        agent.wait_status_message("loading", True, timeout=SETTLE_S)
        agent.wait_status_message("headless", False, timeout=SETTLE_S)
        for name, start_ in (("warming", warming), ("tight", tight), ("bare", bare)):
            if start_ is not None:
                agent.wait_status_message(name, True, timeout=SETTLE_S)
        if generation.status_handling is StatusHandling.ROUTE_HEALTH:
            agent.wait_route("plain", True, timeout=SETTLE_S)
            agent.wait_route("loading", True, timeout=SETTLE_S)
            agent.wait_route("headless", False, timeout=SETTLE_S)
            if tight is not None:
                agent.wait_route("tight", True, timeout=SETTLE_S)
        # Failing checks never stop or restart a server: the same processes still serve.
        for name, port in (("loading", loading_port), ("headless", headless_port)):
            row = kernel.child(f"service:{name}-{port}")
            assert row is not None and row["restarts"] == 0 and row.get("pid"), row
            assert not refused(port), name
        if warming is not None:
            pid = kernel.pid(f"service:warming-{warming_port}")
            wait_until(lambda: not refused(warming_port), timeout=SETTLE_S, what="the warming server's port")
            assert kernel.pid(f"service:warming-{warming_port}") == pid
            assert [m for m in agent.status_messages if m.get("model_name") == "warming"] == [
                {"model_name": "warming", "is_healthy": True}]  # once, at once; never probed
        if bare is not None:
            wait_until(lambda: not refused(bare_port), timeout=SETTLE_S, what="the unshelled server's port")

    # The slow app: answered within the agent's wait; never lost, never started twice.
    first = agent.finish_service("slowapp", slow_app)
    if generation.service_wait_s > SLOW_APP_DELAY_S + 10:
        assert first.outcome == STARTED, first
    else:
        assert first.outcome == FAILED, f"{release} waits {generation.service_wait_s:g}s: {first}"
        assert first.reply["error"].startswith("opening the service port timed out: slowapp"), first
    row = kernel.child("service:slowapp")  # still starting (or started): it was never given up
    assert row is not None and row.get("pid"), row
    pid = row["pid"]
    wait_until(lambda: not refused(app_port), timeout=SETTLE_S, what="the slow app's port")
    again = agent.start_service("slowapp", app_port)
    assert again.outcome in (STARTED, RUNNING), again
    assert kernel.pid("service:slowapp") == pid
    assert len([p for p in psutil.Process().children(recursive=True) if LISTENER in " ".join(_cmdline(p))]) == 1
    assert agent.reader_error is None


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


@pytest.mark.parametrize("release", ROW_REPRESENTATIVES)
def test_completion_as_each_generation_reads_it(kernels: Kernels, release: str) -> None:
    agent = kernels.start(release).agent
    completion = agent.complete("impo", {"row": 0, "col": 4})
    # One shape for every agent: 25.10+ hand `.get("suggestions")` on, older ones pass the JSON on untouched.
    assert isinstance(completion.raw, dict) and isinstance(completion.raw.get("suggestions"), list), completion
    if agent.generation.completion_reads_suggestions:
        assert completion.error is None and completion.suggestions == completion.raw["suggestions"], completion


@pytest.mark.parametrize("release", [r for r in ROW_REPRESENTATIVES if GENERATIONS[r].sends_events])
def test_the_event_op_gets_no_reply_and_the_runner_keeps_serving(kernels: Kernels, release: str) -> None:
    agent = kernels.start(release).agent
    agent.notify_oom()
    # The requests after it are answered, and nothing else came: no reply to the event, nothing in a run's output.
    assert agent.status()["kernel_runner"]["ready"] is True
    agent.complete("x")
    assert agent.create_kernel() == ["slowapp"]
    assert agent.run_output == [] and agent.reader_error is None


def test_a_model_failure_destroys_the_kernel_for_the_agents_that_do_so(kernels: Kernels, tmp_path: Path) -> None:
    # 26.4.4+: a `failed` reply (here: the model folder does not exist) makes the agent destroy the kernel.
    agent = kernels.start("26.8.1").agent
    (port,) = free_ports(1)
    definition = model("lost", port, tmp_path / "models")
    definition["model_path"] = str(tmp_path / "no-such-folder")
    result = agent.start_model(definition)
    assert result.outcome == KERNEL_DESTROYED and result.reply["status"] == "failed", result
    assert "no-such-folder" in result.reply["error"] or "model_path" in result.reply["error"], result
    assert agent.destroyed


# ---- rows by name, and releases mapped to rows ------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "row"), [
    ("23.03", "23.03"), ("23.03.11", "23.03.11"), ("23.09.1", "23.09.1"), ("24.12", "24.12"), ("25.12", "25.12"),
    ("26.4.4", "26.4.4"), ("26.4.10", "26.4.10"), ("26.7", "26.7"), ("26.8", "26.8"),
    ("23.03.7", "23.03"), ("24.09.5", "23.09.1"), ("25.1", "24.12"), ("26.4.7", "26.4.4"), ("26.8.1", "26.8"),
])
def test_a_row_or_a_release_pins_the_row_holding_it(kernels: Kernels, setting: str, row: str) -> None:
    # `row` follows the runner's current row table; a row change is an edit here (and in tests/support/agents.py).
    agent = kernels.start("23.03.11", setting=setting).agent
    chosen = agent.runner_generation()
    assert chosen["row"] == row and chosen["pinned"] is True, chosen
    assert chosen["contract"] == ("verdict" if row in ("23.03", "23.03.11") else "spawned"), chosen


# ---- auto: start-up evidence --------------------------------------------------------------------------------------
@pytest.fixture
def mounts(tmp_path: Path) -> dict[str, Path]:
    folders = {"kernel": tmp_path / "opt-kernel"}
    for folder in folders.values():
        folder.mkdir()
    return folders


def auto_kernel(kernels: Kernels, mounts: dict[str, Path], release: str = "23.09.1") -> Kernel:
    return kernels.start(release, setting="auto", dropbear_dir=mounts["kernel"], ttyd_path=mounts["kernel"] / "ttyd")


def test_without_evidence_auto_serves_the_spawned_contract(kernels: Kernels, mounts: dict[str, Path]) -> None:
    chosen = auto_kernel(kernels, mounts).agent.runner_generation()
    assert chosen["pinned"] is False and chosen["contract"] == "spawned", chosen
    assert chosen["row"] in {g.row for g in GENERATIONS.values()} and chosen["reason"], chosen


def _executable(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


@pytest.mark.parametrize(("evidence", "row"), [
    ("dropbearmulti", "23.09.1"),  # mounted from 24.03.8
    ("ttyd", "25.12"),  # /opt/kernel/ttyd from 25.13.2
    ("host key", "25.12"),  # <config dir>/ssh/dropbear_rsa_host_key from 26.3.0
])
def test_mount_evidence_sets_the_floor(kernels: Kernels, mounts: dict[str, Path], runner_config: RunnerConfig,
                                       evidence: str, row: str) -> None:
    if evidence == "dropbearmulti":
        _executable(mounts["kernel"] / "dropbearmulti")
    elif evidence == "ttyd":
        _executable(mounts["kernel"] / "ttyd")
    else:
        key = runner_config.config_dir / "ssh" / "dropbear_rsa_host_key"
        key.parent.mkdir(parents=True)
        key.write_bytes(b"not a real key, only its presence counts")
    chosen = auto_kernel(kernels, mounts).agent.runner_generation()
    assert chosen["row"] == row and chosen["pinned"] is False, chosen
    assert chosen["reason"], chosen


# ---- auto: payload evidence ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("release", "row"), [
    ("23.09.1", None),  # a list start_command and no newer key: nothing beyond the default
    ("24.12.0", "24.12"),  # shell, metadata and health_check.interval
    ("25.18.0", "25.12"),  # health_check.initial_delay
    ("26.4.4", "26.4.4"),  # health_check.enable
    ("26.8.1", "26.8"),  # a string start_command with enable (and shell null below)
])
def test_a_model_payload_raises_the_floor(kernels: Kernels, mounts: dict[str, Path], tmp_path: Path, release: str,
                                          row: str | None) -> None:
    agent = auto_kernel(kernels, mounts, release).agent
    before = agent.runner_generation()
    (port,) = free_ports(1)
    generation = GENERATIONS[release]
    extra = {"shell": None} if generation.schema.command is Command.STRING else {}
    result = agent.start_model(model("probe", port, tmp_path / "models", check=health(
        generation, max_retries=2, max_wait_time=1.0, interval=0.5, initial_delay=1.0, enable=True), **extra))
    assert result.outcome == STARTED, result
    after = agent.runner_generation()
    assert after["row"] == (row or before["row"]) and after["pinned"] is False, (before, after)


def test_the_floor_only_rises_and_a_pinned_setting_wins(kernels: Kernels, mounts: dict[str, Path],
                                                        tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    port_a, port_b, port_c = free_ports(3)
    agent = auto_kernel(kernels, mounts, "26.8.1").agent
    newest = model("a", port_a, models_dir, check=health(GENERATIONS["26.8.1"], enable=True, initial_delay=0),
                   shell=None)
    assert agent.start_model(newest).outcome == STARTED
    assert agent.runner_generation()["row"] == "26.8"
    older = model_payload(GENERATIONS["24.12.0"], model("b", port_b, models_dir))
    assert agent.start_model_payload(older).outcome == STARTED
    assert agent.runner_generation()["row"] == "26.8"  # an older-looking payload lowers nothing

    pinned = kernels.start("23.03.11").agent
    newer = model_payload(GENERATIONS["26.8.1"], model("c", port_c, models_dir))
    result = pinned.start_model_payload(newer)
    assert result.reply == {"status": "started"}, result  # the verdict contract: answered once the port opened
    assert pinned.routes == {"c": True}
    chosen = pinned.runner_generation()
    assert chosen["row"] == "23.03.11" and chosen["pinned"] is True, chosen


# ---- the setting through the environment, with the real runner process ----------------------------------------------
@pytest.mark.timeout(120)
def test_the_environment_pins_a_real_runner_process(runner_processes: RunnerProcesses) -> None:
    runner = runner_processes.start(service_defs={"slowapp": SLOW_APP},
                                    env={"KERNEL_RUNNER_AGENT_GENERATION": "26.4.10"})
    with StandInAgent(GENERATIONS["26.4.10"], AgentClient(port_in=runner.port_in, port_out=runner.port_out)) as agent:
        expect_chosen(agent, pinned=True)
        (port,) = free_ports(1)
        first = agent.start_service("slowapp", port)  # the 35 s agent: the runner waits for the port
        assert first.outcome == STARTED and first.took_s >= SLOW_APP_DELAY_S, first
        assert agent.start_service("slowapp", port).outcome == RUNNING
    assert runner.stop() == 0


def test_the_flag_wins_over_the_environment(runner_processes: RunnerProcesses) -> None:
    runner = runner_processes.start("app", "--agent-generation", "26.8",
                                    env={"KERNEL_RUNNER_AGENT_GENERATION": "23.03.11"})
    with StandInAgent(GENERATIONS["26.8.1"], AgentClient(port_in=runner.port_in, port_out=runner.port_out)) as agent:
        expect_chosen(agent, pinned=True)
    assert runner.stop() == 0


def test_an_unknown_setting_stops_the_start_with_a_clear_message(runner_processes: RunnerProcesses) -> None:
    runner = runner_processes.start(env={"KERNEL_RUNNER_AGENT_GENERATION": "banana"}, wait_for_bind=False)
    code = runner.wait(timeout=30)
    assert code != 0
    said = runner.log_text() + runner.stdout_path.read_text(errors="replace")
    assert "banana" in said, said
    assert runner.bind_lines() == []
