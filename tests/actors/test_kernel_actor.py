"""KernelActor pieces without a real ipykernel: kernelspec lookup, output mapping, exit codes, the phase table, and
the actor's start failures (missing kernelspec, a kernel that exits or never answers) and a stop before the kernel is
ready, inside a real tree. The drawing helpers have their own tests (tests/unit/test_drawing.py)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from loguru import logger

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.actors.kernel.actor import LIFECYCLE, KernelSettings, Phase
from kernel_runner.actors.kernel.jupyter import (
    DISPLAY_PREFERENCE,
    KernelSpecError,
    exit_code_from_reply,
    find_kernelspec,
    iter_records,
    kernel_argv,
    map_display,
    split_records,
)
from kernel_runner.client import AgentClient, RunResult
from kernel_runner.config import RestartDefaults
from kernel_runner.context import RunnerContext
from kernel_runner.drawing import DRAWING_MIME
from kernel_runner.ids import KERNEL_CHILD
from kernel_runner.messages import Html, Media
from kernel_runner.runtime.tree import Tier, kernel_child_spec
from kernel_runner.supervision.actor import InvalidTransition, PhaseMachine
from kernel_runner.supervision.spec import ChildSpec, ChildState
from kernel_runner.wire.outbox import RouterLink
from tests.support.procs import assert_gone
from tests.support.waiting import wait_until

# ---------------------------------------------------------------------------------------------------------------------
# kernelspec lookup
# ---------------------------------------------------------------------------------------------------------------------


def write_kernelspec(root: Path, name: str, argv: list[str], **extra: Any) -> Path:
    directory = root / "kernels" / name
    directory.mkdir(parents=True)
    (directory / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python", **extra}))
    return directory


def test_kernelspec_lookup_is_exact(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_kernelspec(tmp_path, "python3-extra", ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                     interrupt_mode="message", env={"FROM_SPEC": "{resource_dir}/x"})
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    spec = find_kernelspec("python3-extra")
    assert spec.interrupt_mode == "message"
    assert spec.env == {"FROM_SPEC": "{resource_dir}/x"}
    assert find_kernelspec("python3").interrupt_mode == "signal"
    # Upstream's substring match would take `python3` for `python` and anything for an empty name (docs/protocol.md §10.2 #14).
    with pytest.raises(KernelSpecError, match=r"no Jupyter kernelspec named 'python' \(installed: .*python3"):
        find_kernelspec("python")
    with pytest.raises(KernelSpecError, match="no kernelspec name"):
        find_kernelspec("")


def test_kernel_argv_fills_placeholders_and_uses_our_interpreter(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    directory = write_kernelspec(tmp_path, "k", ["python3", "-m", "x", "-f", "{connection_file}", "{resource_dir}"])
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    argv = kernel_argv(find_kernelspec("k"), "/tmp/conn.json")
    assert argv == [sys.executable, "-m", "x", "-f", "/tmp/conn.json", str(directory)]


# ---------------------------------------------------------------------------------------------------------------------
# output mapping and exit codes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 10, 1000, 4097])
def test_split_records_keeps_utf8_sequences_whole(size: int) -> None:
    data = ("aé€😀" * size).encode()
    records = split_records(data, limit=7)
    assert b"".join(records) == data
    assert all(0 < len(r) <= 7 for r in records)
    for record in records:
        record.decode("utf-8")  # raises if a record starts or ends inside a character


@pytest.mark.parametrize("text", ["", "plain ascii " * 100, "mixed é€😀 text " * 100])
def test_iter_records_encodes_per_record_within_the_limit(text: str) -> None:
    records = list(iter_records(text, limit=64))
    assert b"".join(records) == text.encode()
    assert all(0 < len(r) <= 64 for r in records)


def test_split_records_default_limit_is_one_mebibyte() -> None:
    data = b"x" * (3 * 1024 * 1024 + 5)
    assert [len(r) for r in split_records(data)] == [1 << 20, 1 << 20, 1 << 20, 5]


PNG_B64 = base64.b64encode(b"\x89PNG-bytes").decode()


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        ({"text/plain": "<Figure>", "image/png": PNG_B64 + "\n"},
         Media(mime="image/png", data=f"data:image/png;base64,{PNG_B64}")),
        ({"image/jpeg": "AAAA", "text/html": "<b>x</b>"}, Media(mime="image/jpeg", data="data:image/jpeg;base64,AAAA")),
        ({"text/html": "<b>x</b>", "image/svg+xml": "<svg/>"}, Media(mime="image/svg+xml", data="<svg/>")),
        ({"text/plain": "df", "text/html": "<table/>"}, Html(html="<table/>")),
        ({"text/plain": "x", DRAWING_MIME: "abc="}, Media(mime=DRAWING_MIME, data="abc=")),
        ({"text/plain": "2"}, "2"),
        ({"text/markdown": "# hi", "text/plain": "<Markdown>"}, "<Markdown>"),
        ({"application/json": {"a": 1}}, Media(mime="application/json", data='{"a": 1}')),
        ({}, None),
    ],
)
def test_display_bundles_follow_the_preference_order(bundle: dict[str, Any], expected: object) -> None:
    assert map_display(bundle) == expected


def test_preference_order_is_the_documented_one() -> None:
    assert DISPLAY_PREFERENCE == ("image/png", "image/jpeg", "image/svg+xml", "text/html", DRAWING_MIME)


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ({"status": "ok"}, 0),
        ({"status": "error", "ename": "ZeroDivisionError", "evalue": "division by zero"}, 1),
        ({"status": "error", "ename": "SystemExit", "evalue": "3"}, 3),
        ({"status": "error", "ename": "SystemExit", "evalue": ""}, 0),
        ({"status": "error", "ename": "SystemExit", "evalue": "None"}, 0),
        ({"status": "error", "ename": "SystemExit", "evalue": "bye"}, 1),
        ({"status": "error", "ename": "SystemExit", "evalue": "256"}, 0),
        ({"status": "error", "ename": "KeyboardInterrupt", "evalue": ""}, 130),
        ({"status": "aborted"}, 1),
        (None, 1),
    ],
)
def test_exit_code_comes_from_the_execute_reply(reply: dict[str, Any] | None, code: int) -> None:
    assert exit_code_from_reply(reply) == code


def test_child_spec_is_permanent_bounded_and_tiered_with_the_language(runner_config: RunnerConfig) -> None:
    spec = kernel_child_spec(RunnerContext(config=runner_config, router=RouterLink(1)), KernelSettings(kernel_name="python3"))
    assert spec.child_id == KERNEL_CHILD
    assert spec.restart == "permanent"
    assert spec.tier == Tier.PROCESSES_TOGETHER == 1  # stops with the language runner and the services
    assert spec.intensity.max_restarts == 5
    assert spec.backoff.initial_s == runner_config.restart.backoff_initial_s
    assert spec.stable_after_s == 10.0
    assert spec.reject is not None  # its runs are answered through the language runner (tests/actors/test_lang_runner_*)


# ---------------------------------------------------------------------------------------------------------------------
# the actor inside a real tree, with kernels that cannot work
# ---------------------------------------------------------------------------------------------------------------------

FAST_RESTARTS = RestartDefaults(backoff_initial_s=0.02, backoff_factor=2.0, backoff_cap_s=0.1, backoff_jitter=0.0,
                                intensity_max_restarts=2, intensity_period_s=60.0)


@pytest.fixture
def fast_config(runner_config: RunnerConfig) -> RunnerConfig:
    return attrs.evolve(runner_config, lang="python", restart=FAST_RESTARTS)


@pytest.fixture
def tree(fast_config: RunnerConfig, request: pytest.FixtureRequest) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    kernel_name, ready_timeout_s = request.param
    def kernel(runner: RunnerContext) -> ChildSpec:
        return kernel_child_spec(runner, KernelSettings(kernel_name=kernel_name, ready_timeout_s=ready_timeout_s))

    handle = start(fast_config, extra_children=[kernel])
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as client:
            yield handle, client
    finally:
        handle.stop(timeout=5)


def run_code(handle: RunnerHandle, client: AgentClient, code: str, timeout: float = 10.0) -> RunResult:
    client.send("code", code)  # through the language runner, which delegates `code` to the kernel child
    return client.collect_run(timeout)


def kernel_state(handle: RunnerHandle) -> ChildState | None:
    for info in handle.which_children():
        if info.child_id == KERNEL_CHILD:
            return info.state
    return None


@pytest.mark.parametrize("tree", [("no-such-kernel", 5.0)], indirect=True)
def test_missing_kernelspec_answers_runs_with_127_and_the_reason(tree: tuple[RunnerHandle, AgentClient]) -> None:
    handle, client = tree
    result = run_code(handle, client, "print(1)")
    assert result.exit_code == 127
    assert b"no Jupyter kernelspec named 'no-such-kernel'" in result.stderr
    assert client.complete("impo") == {"suggestions": []}
    # Bounded retries: the supervisor gives up, and then its reject answers with 127.
    wait_until(lambda: kernel_state(handle) is ChildState.FATAL, timeout=5, what="the kernel child to be FATAL")
    result = run_code(handle, client, "print(2)")
    assert result.exit_code == 127
    assert b"the Jupyter kernel is not running" in result.stderr


@pytest.fixture
def bad_kernels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    root = tmp_path / "jupyter"
    write_kernelspec(root, "exits", [sys.executable, "-c", "import sys; sys.exit(3)", "{connection_file}"])
    write_kernelspec(root, "mute", [sys.executable, "-c", "import time; time.sleep(60)", "{connection_file}"])
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    return root


@pytest.mark.parametrize("tree", [("exits", 5.0)], indirect=True)
def test_a_kernel_that_exits_at_start_fails_runs_and_restarts_boundedly(
    log_lines: list[str], bad_kernels: Path, tree: tuple[RunnerHandle, AgentClient]
) -> None:  # log_lines first: the sink must be in place before the runner logs its first line
    handle, client = tree
    result = run_code(handle, client, "print(1)")
    assert result.exit_code == 127
    assert b"the exits kernel exited during start (exit code 3)" in result.stderr
    wait_until(lambda: kernel_state(handle) is ChildState.FATAL, timeout=5, what="the kernel child to be FATAL")
    assert sum("kernel exits argv=" in line for line in log_lines) == 3  # first start + 2 restarts


@pytest.mark.parametrize("tree", [("mute", 0.5)], indirect=True)
def test_a_kernel_that_never_answers_is_killed_after_the_ready_timeout(
    bad_kernels: Path, tree: tuple[RunnerHandle, AgentClient]
) -> None:
    handle, client = tree
    result = run_code(handle, client, "print(1)")
    assert result.exit_code == 127
    assert b"did not become ready within 0.5 s" in result.stderr
    # The mute processes are killed at each failed start; the autouse check asserts none is left at the end.
    wait_until(lambda: kernel_state(handle) is ChildState.FATAL, timeout=10, what="the kernel child to be FATAL")


# ---------------------------------------------------------------------------------------------------------------------
# phases: the table, and the lives the failing kernels above go through
# ---------------------------------------------------------------------------------------------------------------------

L, C, R, K, D, T, S, E = (Phase.LAUNCHING, Phase.CONNECTING, Phase.READY, Phase.KILLING, Phase.DYING, Phase.RETIRING,
                          Phase.STOPPING, Phase.ENDED)
PHASE_LINE = re.compile(r"\[kernel\] phase (\w+) -> (\w+)")


def kernel_phases(log_lines: list[str]) -> list[tuple[Phase, Phase]]:
    """The kernel child's phase edges, in order, from PhaseMachine's debug lines (all incarnations, one after another)."""
    return [(Phase[m[1]], Phase[m[2]]) for line in list(log_lines) if (m := PHASE_LINE.search(line))]


def edges(*phases: Phase) -> list[tuple[Phase, Phase]]:
    return list(itertools.pairwise(phases))


def reachable(start: Phase) -> set[Phase]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in LIFECYCLE.transitions[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_phase_is_reachable_and_every_life_can_only_end() -> None:
    assert set(LIFECYCLE.transitions) == set(Phase) == set(LIFECYCLE.child_states)
    assert reachable(L) == set(Phase)
    assert all(E in reachable(phase) for phase in Phase)
    assert LIFECYCLE.transitions[E] == frozenset()
    # Once dying, the incarnation ends: nothing leads back to running code or to a stop.
    assert reachable(D) == {D, T, E}


def test_the_supervisor_sees_starting_running_backoff_and_stopping() -> None:
    assert [phase for phase in Phase if LIFECYCLE.child_states[phase] is ChildState.STARTING] == [L, C]
    assert [phase for phase in Phase if LIFECYCLE.child_states[phase] is ChildState.RUNNING] == [R, K]
    assert [phase for phase in Phase if LIFECYCLE.child_states[phase] is ChildState.BACKOFF] == [D, T]
    assert LIFECYCLE.child_states[S] is ChildState.STOPPING and LIFECYCLE.child_states[E] is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (L, R),  # code runs only once the channels saw the kernel answer
        (C, K),  # nothing to interrupt before the kernel is ready
        (K, R),  # a kernel killed for an ignored interrupt never runs code again
        (D, R),  # nor does a dead one
        (D, S),  # a stop while dying changes nothing: the death ends the incarnation
        (T, S),
        (D, E),  # not before the running cell ended and the queue was handed back
        (S, D),  # a kernel that exits while stopping was stopped, it did not die
        (E, L),  # the next incarnation is a new actor
    ],
)
def test_the_table_rejects_edges_that_must_never_happen(old: Phase, new: Phase) -> None:
    life = PhaseMachine(old, LIFECYCLE.transitions, log=lambda: logger.bind(child="test"))
    with pytest.raises(InvalidTransition, match=f"{old.name} -> {new.name} is not allowed"):
        life.to(new, "a bug")
    assert life.phase is old


@pytest.mark.parametrize(
    ("tree", "life"),
    [
        (("no-such-kernel", 5.0), edges(L, D, T, E)),  # no kernelspec: it never spawns
        (("exits", 5.0), edges(L, C, D, T, E)),  # spawned, then exited before it answered
        (("mute", 0.5), edges(L, C, D, T, E)),  # spawned, never answered within the ready timeout
    ],
    indirect=["tree"],
)
def test_each_failed_start_dies_retires_and_ends(
    log_lines: list[str], bad_kernels: Path, tree: tuple[RunnerHandle, AgentClient], life: list[tuple[Phase, Phase]]
) -> None:
    # log_lines comes first: pytest sets fixtures up in argument order, and the runner (`tree`) logs its first edge
    # as soon as it starts.
    handle, _client = tree
    wait_until(lambda: kernel_state(handle) is ChildState.FATAL, timeout=10, what="the kernel child to be FATAL")
    assert kernel_phases(log_lines) == life * 3  # first start + 2 restarts, each the same life


@pytest.mark.parametrize("tree", [("mute", 30.0)], indirect=True)
def test_an_interrupt_cancels_queued_code_and_a_stop_ends_a_connecting_kernel(
    log_lines: list[str], bad_kernels: Path, tree: tuple[RunnerHandle, AgentClient]
) -> None:  # log_lines first: the sink must be in place before the runner logs its first line
    handle, client = tree
    client.send("code", "print(1)")
    wait_until(lambda: any("[lang] run" in line and "code delegated to kernel" in line for line in list(log_lines)),
               timeout=5, what="the run to be delegated to the kernel")
    wait_until(lambda: (L, C) in kernel_phases(log_lines), timeout=5, what="the kernel to be connecting")
    client.interrupt()
    result = client.collect_run(5)
    assert (result.status, result.exit_code) == ("finished", 130)
    assert b"KeyboardInterrupt (the kernel was not ready yet)" in result.stderr
    [info] = [info for info in handle.which_children() if info.child_id == KERNEL_CHILD]
    assert info.state is ChildState.STARTING and info.pid == info.extra["kernel_pid"]
    assert handle.stop(timeout=5)
    assert kernel_phases(log_lines) == edges(L, C, S, E)  # stopped: no death, no restart
    assert_gone([info.extra["kernel_pid"]], timeout=2)
