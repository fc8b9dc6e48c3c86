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
import pytest

from kernel_runner import RunnerConfig, start
from kernel_runner.client import AgentClient
from kernel_runner.supervision import ChildState
from tests.conftest import CHILDREN
from tests.support.ports import free_port
from tests.support.waiting import wait_until

DROPBEAR = shutil.which("dropbear") or "/usr/sbin/dropbear"
TEST_USER = "krsshtest"


def running(handle: object, child_id: str) -> object:
    for child in handle.which_children():  # type: ignore[attr-defined]
        if child.child_id == child_id and child.state is ChildState.RUNNING:
            return child
    return None


@pytest.fixture
def tool_dir(tmp_path: Path) -> Path:
    """The runner looks for dropbear and its key tools in one folder, as in /opt/kernel."""
    folder = tmp_path / "kernel-bin"
    folder.mkdir()
    for tool in (DROPBEAR, shutil.which("dropbearkey"), shutil.which("dropbearconvert")):
        if tool is None or not os.path.exists(tool):
            pytest.fail("dropbear-bin is not installed; `make test` installs it (see .ci/apt-packages.txt)")
        (folder / Path(tool).name).symlink_to(tool)
    (folder / "ttyd").symlink_to(CHILDREN / "fake_ttyd.py")
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
