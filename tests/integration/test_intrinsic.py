"""Intrinsic sshd (real dropbear from Debian's dropbear-bin) and ttyd (a stand-in) as supervised children."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import psutil
import pytest

from kernel_runner import RunnerConfig, start
from kernel_runner.client import AgentClient
from kernel_runner.supervision.spec import ChildState
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.waiting import wait_until

DROPBEAR = shutil.which("dropbear") or "/usr/sbin/dropbear"
TEST_USER = "krsshtest"
# Debian ships the dropbear tools one by one; agents since 24.03.8 mount the multi-call binary instead, which takes
# the tool's name as its first argument (docs/protocol.md §6.10). This stand-in dispatches to Debian's tools.
MULTICALL = """#!/bin/sh
tool=$1; shift
case $tool in
  dropbear) exec {dropbear} "$@" ;;
  dropbearkey) exec {dropbearkey} "$@" ;;
  dropbearconvert) exec {dropbearconvert} "$@" ;;
esac
echo "dropbearmulti: no tool $tool" >&2
exit 1
"""


def running(handle: object, child_id: str) -> object:
    for child in handle.which_children():  # type: ignore[attr-defined]
        if child.child_id == child_id and child.state is ChildState.RUNNING:
            return child
    return None


def dropbear_tools() -> dict[str, str]:
    tools = {"dropbear": DROPBEAR, "dropbearkey": shutil.which("dropbearkey"),
             "dropbearconvert": shutil.which("dropbearconvert")}
    for tool in tools.values():
        if tool is None or not os.path.exists(tool):
            pytest.fail("dropbear-bin is not installed; `make test` installs it (see .ci/apt-packages.txt)")
    return tools  # type: ignore[return-value]


@pytest.fixture
def tool_dir(tmp_path: Path) -> Path:
    """The runner looks for dropbear and its key tools in one folder, as in /opt/kernel."""
    folder = tmp_path / "kernel-bin"
    folder.mkdir()
    for name, tool in dropbear_tools().items():
        (folder / name).symlink_to(tool)
    (folder / "ttyd").symlink_to(CHILDREN / "fake_ttyd.py")
    return folder


@pytest.fixture(params=["one-by-one", "dropbearmulti"])
def dropbear_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """/opt/kernel as agents before and since 24.03.8 lay it out."""
    folder = tmp_path / "kernel-bin"
    folder.mkdir()
    tools = dropbear_tools()
    if request.param == "one-by-one":
        for name, tool in tools.items():
            (folder / name).symlink_to(tool)
    else:
        multi = folder / "dropbearmulti"
        multi.write_text(MULTICALL.format(**tools))
        multi.chmod(0o755)
    return folder


@pytest.fixture
def ssh_home() -> Iterator[Path]:
    """A throwaway login user whose home is the runner's work dir (dropbear -w refuses root, as docs/protocol.md §6.10 wants)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create the throwaway login user (CI and the dev machines run as root)")
    home = Path("/tmp") / f"kr-sshd-home-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o755)
    try:
        pwd.getpwnam(TEST_USER)
        subprocess.run(["usermod", "-d", str(home), TEST_USER], check=True)
    except KeyError:
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", TEST_USER], check=True)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_sshd_login_with_the_generated_key_and_ttyd_supervised(
    runner_config: RunnerConfig, tool_dir: Path, ssh_home: Path, tmp_path: Path, log_lines: list[str]
) -> None:
    sshd_port, ttyd_port = free_port(), free_port()
    config = attrs.evolve(
        runner_config, work_dir=ssh_home, dropbear_dir=tool_dir, ttyd_path=tool_dir / "ttyd",
        sshd_port=sshd_port, ttyd_port=ttyd_port, start_intrinsic_services=True,
    )
    handle = start(config)
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            body = agent.status(timeout=60)  # answered only once the intrinsic services were started
            assert body["kernel_runner"]["ready"] is True
            wait_until(lambda: running(handle, "service:sshd"), timeout=20, what="sshd running")
            wait_until(lambda: running(handle, "service:ttyd"), timeout=20, what="ttyd running")
            assert (ssh_home / ".ssh" / "authorized_keys").read_text().startswith("ssh-rsa ")
            assert (ssh_home / "id_container").read_text().startswith("-----BEGIN")
            # In a container the runner runs as the user and owns these files; here it runs as root.
            subprocess.run(["chown", "-R", TEST_USER, str(ssh_home)], check=True)
            login = subprocess.run(
                ["dbclient", "-y", "-i", "/tmp/dropbear/id_dropbear", "-p", str(sshd_port),
                 f"{TEST_USER}@127.0.0.1", "echo hello-over-ssh; id -un"],
                capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
            )
            assert login.returncode == 0, login.stderr.decode(errors="replace")
            assert login.stdout.decode().split() == ["hello-over-ssh", TEST_USER]
            # docs/protocol.md §6.11: this ttyd lists -W in its --help (as ttyd 1.7 and later), so it is writable.
            ttyd_argv = psutil.Process(running(handle, "service:ttyd").pid).cmdline()  # type: ignore[attr-defined]
            assert ttyd_argv[ttyd_argv.index("-W") + 1:][:2] == ["-p", str(ttyd_port)]
            # The agent asks for them like any service port: they are already running.
            assert agent.start_service({"name": "sshd", "port": sshd_port, "protocol": "tcp"}) == {"status": "running"}
            # A ttyd that dies is restarted (intrinsic services are permanent children).
            ttyd = running(handle, "service:ttyd")
            os.kill(ttyd.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            wait_until(
                lambda: (c := running(handle, "service:ttyd")) and c.pid != ttyd.pid,  # type: ignore[attr-defined]
                timeout=20, what="ttyd restarted",
            )
    finally:
        handle.stop(timeout=10)


def test_sshd_serves_the_agents_host_key_and_generates_none(runner_config: RunnerConfig, dropbear_dir: Path,
                                                            tmp_path: Path, log_lines: list[str]) -> None:
    """docs/protocol.md §6.10: agents since 26.3 write the host key to <config dir>/ssh/dropbear_rsa_host_key."""
    agent_key = runner_config.config_dir / "ssh" / "dropbear_rsa_host_key"
    agent_key.parent.mkdir()
    made = subprocess.run([dropbear_tools()["dropbearkey"], "-t", "rsa", "-s", "2048", "-f", str(agent_key)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    public = subprocess.run([dropbear_tools()["dropbearkey"], "-y", "-f", str(agent_key)], capture_output=True,
                            text=True, timeout=30)
    key_blob = next(line.split()[1] for line in public.stdout.splitlines() if line.startswith("ssh-rsa "))
    key_bytes = agent_key.read_bytes()
    ssh_dir = runner_config.work_dir / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text("ssh-rsa AAAAexisting user@elsewhere\n")  # so no user key is made either
    sshd_port = free_port()
    config = attrs.evolve(runner_config, dropbear_dir=dropbear_dir, ttyd_path=tmp_path / "no-ttyd", sshd_port=sshd_port,
                          start_intrinsic_services=True)
    handle = start(config)
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            assert agent.status(timeout=60)["kernel_runner"]["ready"] is True
        sshd = wait_until(lambda: running(handle, "service:sshd"), timeout=20, what="sshd running")
        argv = psutil.Process(sshd.pid).cmdline()  # type: ignore[attr-defined]
        assert argv[argv.index("-r") + 1] == str(agent_key)

        def served_keys() -> list[str] | None:
            scan = subprocess.run(["ssh-keyscan", "-t", "rsa", "-T", "5", "-p", str(sshd_port), "127.0.0.1"],
                                  capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            return [line.split()[2] for line in scan.stdout.splitlines() if " ssh-rsa " in line] or None

        assert wait_until(served_keys, timeout=30, what="the host key sshd presents") == [key_blob]
        assert agent_key.read_bytes() == key_bytes  # used as it is: neither regenerated nor rewritten
        assert any("sshd serves the agent's host key" in line for line in log_lines)
        assert not any("sshd init error" in line for line in log_lines)
    finally:
        handle.stop(timeout=10)


def test_missing_binaries_are_a_warning_not_a_traceback(runner_config: RunnerConfig, tmp_path: Path,
                                                        log_lines: list[str]) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    config = attrs.evolve(runner_config, dropbear_dir=empty, ttyd_path=empty / "ttyd", start_intrinsic_services=True)
    handle = start(config)
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            assert agent.status(timeout=20)["kernel_runner"]["ready"] is True
            assert agent.start_service({"name": "sshd", "port": free_port(), "protocol": "tcp"}) == {
                "status": "failed", "error": "unsupported service"}
        assert any("intrinsic sshd disabled" in line and "WARNING" in line for line in log_lines)
        assert any("intrinsic ttyd disabled" in line for line in log_lines)
        assert not any("Traceback" in line for line in log_lines)
    finally:
        handle.stop(timeout=5)
