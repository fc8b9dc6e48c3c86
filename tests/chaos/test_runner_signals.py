"""The runner process itself under fire: signals at start-up, idle and under load; a user's daemon; SIGKILL.

docs/protocol.md §1.3 and §1.7: SIGINT, SIGTERM and SIGQUIT each lead to the logged, ordered stop within the
shutdown deadline and exit status 0; every op still waiting is answered once; nothing the runner started is left.
SIGHUP rereads the service definitions instead: the runner keeps serving, every op is answered as without it.
docs/architecture.md §6 says which of its children die with it when the runner itself is SIGKILLed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from kernel_runner.client import AgentClient
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.probes import ProbeTally, Scale
from tests.support.procs import alive, assert_gone
from tests.support.reliability import (
    RUN_END_TYPES,
    START_TIMEOUT_S,
    children,
    kernel_pid,
    one_run,
    ready_kernel,
)
from tests.support.runner_process import EXIT_SLACK_S, RunnerProcess, RunnerProcesses
from tests.support.waiting import wait_until

pytestmark = pytest.mark.reliability

STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT]
RELOADED = "reloaded service definitions:"
DEADLINE_S = 15.0  # the runner's default; a busy machine must not turn an orderly stop into an overrun
WEB = {"web": {"command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"]}}
DAEMONIZE = str(CHILDREN / "daemonize.py")
HEALTH_SERVER = str(CHILDREN / "health_server.py")


def service_info(name: str, port: int) -> dict[str, object]:
    return {"name": name, "port": port, "ports": [port], "protocol": "http", "options": {}}


def assert_stopped_by(runner: RunnerProcess, signum: int) -> None:
    """Exit 0 within the deadline, the signal named in the log, no process of the runner left (§1.3 step 10)."""
    runner.send_signal(signum)
    code = runner.wait(DEADLINE_S + EXIT_SLACK_S)
    assert code == 0, f"exit status {code} after {signal.Signals(signum).name}:\n{runner.log_tail()}"
    assert signal.Signals(signum).name in runner.log_text(), f"the log does not name the signal:\n{runner.log_tail()}"
    runner.assert_nothing_left()


def wait_for_bootstrap(runner: RunnerProcess) -> None:
    def sleeping() -> bool:
        return any(p.name() == "sleep" for p in runner.descendants())

    wait_until(sleeping, timeout=30, what="bootstrap.sh running")


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_during_start_up(runner_processes: RunnerProcesses, probes: ProbeTally, scale: Scale,
                                signum: int) -> None:
    """Start-up is not over while bootstrap.sh runs (§1.6): the signal lets start-up end and then stops in order."""
    name = signal.Signals(signum).name
    for attempt in probes.repeat(f"{name} at start-up", scale.pick(1, 5)):
        with attempt:
            runner = runner_processes.start("app", bootstrap="sleep 600\n", shutdown_deadline_s=DEADLINE_S)
            wait_for_bootstrap(runner)
            assert_stopped_by(runner, signum)


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_when_idle(runner_processes: RunnerProcesses, probes: ProbeTally, scale: Scale, signum: int) -> None:
    name = signal.Signals(signum).name
    for attempt in probes.repeat(f"{name} when idle", scale.pick(1, 5)):
        with attempt:
            runner = runner_processes.start("app", service_defs=WEB, shutdown_deadline_s=DEADLINE_S)
            agent = runner.agent()
            assert agent.start_service(service_info("web", free_port()), timeout=START_TIMEOUT_S) == {"status": "started"}
            assert_stopped_by(runner, signum)


def read_ends(agent: AgentClient, count: int, *, timeout: float) -> tuple[list[dict[str, int]], list[bytes]]:
    """The next `count` end messages and the stdout of each run; fails if the runner goes quiet first."""
    ends: list[dict[str, int]] = []
    stdout = [b""]
    deadline = time.monotonic() + timeout
    while len(ends) < count:
        reply = agent.recv(timeout=max(0.0, deadline - time.monotonic()))
        if reply.type in RUN_END_TYPES:
            ends.append(json.loads(reply.payload))
            stdout.append(b"")
        elif reply.type == "stdout":
            stdout[-1] += reply.payload
    return ends, stdout[:-1]


def start_python_with_web(runner_processes: RunnerProcesses,
                          **kwargs: Any) -> tuple[RunnerProcess, AgentClient, int]:
    """A python runner with the `web` service up and a ready kernel, and the kernel's pid as the runner sees it.

    The caller remembers that pid for the leftover check only when the runner shares our PID namespace: inside a
    container-like namespace (`prefix`) it is another process's number here.
    """
    runner = runner_processes.start("python", service_defs=WEB, runtime_path=sys.executable,
                                    shutdown_deadline_s=DEADLINE_S, **kwargs)
    agent = runner.agent()
    assert agent.start_service(service_info("web", free_port()), timeout=START_TIMEOUT_S) == {"status": "started"}
    return runner, agent, kernel_pid(ready_kernel(agent))


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_under_load(runner_processes: RunnerProcesses, probes: ProbeTally, scale: Scale, signum: int) -> None:
    """A service, a ready kernel, an `exec` flooding stdout and two queued ops: the running op ends with the signal's
    code, each queued op with 127 (§1.7 step 4), one `finished` each, in order; then exit 0 with nothing left."""
    name = signal.Signals(signum).name
    for attempt in probes.repeat(f"{name} under load", scale.pick(1, 5)):
        with attempt:
            runner, agent, kernel = start_python_with_web(runner_processes)
            runner.remember(kernel)
            agent.send("exec", "yes load")
            agent.send("code", "print('queued')")
            agent.send("exec", "echo queued")
            first = agent.expect("stdout", timeout=30).payload
            runner.send_signal(signum)
            ends, stdout = read_ends(agent, 3, timeout=DEADLINE_S + EXIT_SLACK_S)
            assert ends[0]["exitCode"] != 0 and [e["exitCode"] for e in ends[1:]] == [127, 127], ends
            # `yes` writes "load\n" for ever: the stream the agent got is that, whole lines and one cut-off tail.
            flood = first + stdout[0]
            lines = len(flood) // 5
            assert flood == b"load\n" * lines + b"load\n"[: len(flood) % 5], "flood output altered or reordered"
            assert stdout[1:] == [b"", b""], stdout[1:]
            code = runner.wait(DEADLINE_S + EXIT_SLACK_S)
            assert code == 0, f"exit status {code} after {name}:\n{runner.log_tail()}"
            assert name in runner.log_text()
            runner.assert_nothing_left()


def add_definition_and_sighup(runner: RunnerProcess, name: str) -> None:
    """A new service-definition file, then SIGHUP: the next start-service of `name` must find it."""
    (runner.defs_dir / f"{name}.json").write_text(json.dumps(WEB["web"]))
    runner.send_signal(signal.SIGHUP)


def reload_lines(runner: RunnerProcess, name: str) -> list[str]:
    return [line for line in runner.log_text().splitlines() if RELOADED in line and name in line]


def wait_for_log(runner: RunnerProcess, text: str) -> None:
    wait_until(lambda: text in runner.log_text(), timeout=30, what=f"the log line {text!r}")


def wait_for_reload(runner: RunnerProcess, name: str) -> None:
    wait_until(lambda: reload_lines(runner, name), timeout=30, what=f"the reload that adds {name}")
    assert runner.running(), f"SIGHUP stopped the runner:\n{runner.log_tail()}"


def assert_reloaded_and_serving(runner: RunnerProcess, agent: AgentClient, name: str) -> None:
    """The reload is logged once, the new definition starts, `status` answers; then the ordinary stop still works."""
    wait_for_reload(runner, name)
    assert len(reload_lines(runner, name)) == 1, reload_lines(runner, name)
    assert agent.start_service(service_info(name, free_port()), timeout=START_TIMEOUT_S) == {"status": "started"}
    assert agent.status_reply(timeout=30).ready is True
    assert runner.stop() == 0


def test_sighup_during_start_up_reloads_once_start_up_is_done(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                                scale: Scale) -> None:
    """§1.3: a SIGHUP while bootstrap.sh runs is kept and applied when start-up ends; the runner does not stop."""
    for attempt in probes.repeat("SIGHUP at start-up (reload)", scale.pick(1, 5)):
        with attempt:
            runner = runner_processes.start("app", bootstrap="while [ ! -e go ]; do sleep 0.05; done\n",
                                            shutdown_deadline_s=DEADLINE_S)
            wait_for_bootstrap(runner)
            add_definition_and_sighup(runner, "late")
            wait_for_log(runner, "received SIGHUP; rereading the service definitions")
            assert not reload_lines(runner, "late"), "reloaded before start-up ended"
            (runner.work_dir / "go").touch()
            assert_reloaded_and_serving(runner, runner.agent(), "late")


def test_sighup_when_idle_reloads_and_keeps_the_running_service(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                                 scale: Scale) -> None:
    for attempt in probes.repeat("SIGHUP when idle (reload)", scale.pick(1, 5)):
        with attempt:
            runner = runner_processes.start("app", service_defs=WEB, shutdown_deadline_s=DEADLINE_S)
            agent = runner.agent()
            assert agent.start_service(service_info("web", free_port()), timeout=START_TIMEOUT_S) == {"status": "started"}
            web = children(agent)["service:web"]["pid"]
            add_definition_and_sighup(runner, "extra")
            wait_for_reload(runner, "extra")
            assert children(agent)["service:web"]["pid"] == web, "a reload must not restart a running service"
            assert_reloaded_and_serving(runner, agent, "extra")


def test_sighup_under_load_answers_every_op_as_without_it(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                          scale: Scale) -> None:
    """A service, a ready kernel, an `exec` writing 200 000 lines and two queued ops: SIGHUP in the middle changes
    nothing the agent sees (each op ends 0, once, in order, its output whole) and the reload applies."""
    expected = b"".join(b"%d\n" % i for i in range(1, 200_001))
    for attempt in probes.repeat("SIGHUP under load (reload)", scale.pick(1, 5)):
        with attempt:
            runner, agent, kernel = start_python_with_web(runner_processes)
            runner.remember(kernel)
            agent.send("exec", "seq 1 200000")
            agent.send("code", "print('queued')")
            agent.send("exec", "echo queued")
            first = agent.expect("stdout", timeout=30).payload
            add_definition_and_sighup(runner, "extra")
            ends, stdout = read_ends(agent, 3, timeout=120)
            assert [e["exitCode"] for e in ends] == [0, 0, 0], ends
            assert first + stdout[0] == expected, "output altered or reordered by the reload"
            assert stdout[1:] == [b"queued\n", b"queued\n"], stdout[1:]
            assert_reloaded_and_serving(runner, agent, "extra")


def test_a_daemon_started_by_exec_is_gone_after_the_stop(runner_processes: RunnerProcesses, probes: ProbeTally,
                                                         scale: Scale) -> None:
    """A user's program that double-forks into its own session is still stopped with the runner (§1.7: every
    process still below the runner is killed; docs/architecture.md §6)."""
    for attempt in probes.repeat("exec that daemonizes a grandchild", scale.pick(1, 10)):
        with attempt:
            runner = runner_processes.start("app", shutdown_deadline_s=DEADLINE_S)
            agent = runner.agent()
            pid_file = runner.root / "daemon.pid"
            agent.send("exec", f"{sys.executable} {DAEMONIZE} 600 {pid_file}")
            end = agent.collect_run(timeout=30)
            assert (end.status, end.exit_code) == ("finished", 0), end
            wait_until(pid_file.exists, timeout=30, what="the daemon's pid file")
            daemon = int(pid_file.read_text())
            runner.remember(daemon)
            assert runner.stop() == 0  # checks every pid it saw, the daemon's included, is gone


def start_loaded(runner_processes: RunnerProcesses, **kwargs: Any) -> tuple[RunnerProcess, AgentClient]:
    """A python runner with a ready kernel, a service and a model server."""
    runner, agent, _ = start_python_with_web(runner_processes, **kwargs)
    port = free_port()
    model = {"name": "m", "model_path": str(runner.work_dir), "service": {
        "start_command": [sys.executable, HEALTH_SERVER, str(port)], "port": port,
        "health_check": {"path": "/health", "max_retries": 10, "max_wait_time": 1.0}}}
    assert agent.start_model_service(model, timeout=30) == {"status": "started"}
    return runner, agent


def test_the_kernel_and_the_servers_end_when_the_runner_is_sigkilled(runner_processes: RunnerProcesses,
                                                                     probes: ProbeTally, scale: Scale) -> None:
    """SIGKILL leaves the runner no time to stop anything (docs/architecture.md §6): the kernel ends by itself
    (JPY_PARENT_PID, docs/protocol.md §4.1 step 4) and every service and model server gets SIGKILL from the kernel
    (PR_SET_PDEATHSIG), so no port stays held. A user's batch processes are the container's to end (next test)."""
    for attempt in probes.repeat("SIGKILL of the runner: the kernel and the servers end", scale.pick(1, 5)):
        with attempt:
            runner, agent = start_loaded(runner_processes)
            rows = children(agent)
            kernel = kernel_pid(ready_kernel(agent))
            servers = [row["pid"] for child, row in rows.items() if child.startswith("service:")]
            assert len(servers) == 2, rows  # the web service and the model server
            runner.remember(kernel, *servers)
            runner.proc.kill()
            runner.wait(10)
            assert_gone([kernel, *servers], timeout=15)


# A container as the 23.03 agent makes it (docs/protocol.md §1.1): a PID namespace whose init (docker-init there, a
# shell here) has the runner as its one child and exits with it, so the kernel ends every process of the namespace.
CONTAINER = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "/bin/sh", "-c", '"$@"; exit $?', "init"]


def command_of(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def can_make_pid_namespaces() -> bool:
    try:
        return subprocess.run([*CONTAINER, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_sigkill_of_the_runner_in_its_container_ends_every_process(runner_processes: RunnerProcesses,
                                                                   probes: ProbeTally, scale: Scale) -> None:
    """docs/architecture.md §6: SIGKILL leaves the runner no time to stop anything; what ends its processes is the
    container's PID namespace, whose init exits with the runner. Every process of it goes: the kernel, a service, a
    model server, a running batch op and a daemon a user's program left behind."""
    if not can_make_pid_namespaces():
        pytest.skip("needs unshare(1) and the right to make PID namespaces (root)")
    for attempt in probes.repeat("SIGKILL of the runner in its container", scale.pick(1, 5)):
        with attempt:
            runner, agent = start_loaded(runner_processes, prefix=CONTAINER)
            pid_file = runner.root / "daemon.pid"
            end = one_run(agent, "exec", f"{sys.executable} {DAEMONIZE} 600 {pid_file}")
            assert (end.status, end.exit_code) == ("finished", 0), end
            agent.send("exec", "echo running; sleep 600")
            assert agent.expect("stdout", timeout=30).payload == b"running\n"
            everything = [p for p in runner.descendants() if alive(p.pid)]
            (the_runner,) = [p for p in everything if command_of(p).startswith("kernel-runner: Python")]
            # The namespace's init, the runner, the kernel, two servers, the op's shell and sleep, the daemon.
            assert len(everything) >= 8, [command_of(p) for p in everything]
            the_runner.kill()
            runner.wait(15)
            assert_gone([p.pid for p in everything], timeout=15)
