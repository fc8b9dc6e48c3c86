"""Intrinsic sshd and ttyd (docs/protocol.md §6.10-6.11): command lines, missing binaries, and the key-setup plan run on fakes."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import attrs
import pytest

from kernel_runner.config import RunnerConfig
from kernel_runner.servicedefs import SshdSetupError, apply_sshd_setup, intrinsic_launchers, plan_sshd_setup
from kernel_runner.servicedefs.intrinsic import (
    AppendOnce,
    MakeDir,
    RemoveKeyDir,
    RunTool,
    SavePublicKey,
    TightenMode,
    TtydFlags,
    find_ttyd,
    parse_cluster_replicas,
    pick_shell,
    probe_ttyd,
    sshd_argv,
    ttyd_argv,
)
from kernel_runner.servicedefs.schema import ProbeDefinition, ProbeDefinitions, TcpCheck
from tests.conftest import CHILDREN

# A stand-in for dropbearkey that, like the real one, refuses to overwrite an existing key (docs/protocol.md §10.5 item 41).
FAKE_DROPBEARKEY = """\
import os, sys
target = sys.argv[sys.argv.index("-f") + 1]
if os.path.exists(target):
    sys.stderr.write(f"Couldn't create new file {target}: File exists")
    sys.exit(1)
open(target, "w").write("private")
print("Public key portion is:")
print("ssh-rsa AAAAfake" + os.path.basename(target) + " root@container")
print("Fingerprint: sha1!! 00:11:22")
"""
FAKE_DROPBEARCONVERT = """\
import sys
open(sys.argv[4], "w").write("openssh private key for " + sys.argv[3])
"""
FAILING_TOOL = """\
import sys
sys.stderr.write("no entropy")
sys.exit(2)
"""
# ttyd before 1.7: its terminal is writable without -W, and -W is an unknown option that ends it.
OLD_TTYD = """\
import sys
print("ttyd is a tool for sharing terminal over the web\\n    -R, --readonly   Do not allow clients to write to the TTY")
"""
HANGING_TTYD = """\
import time
time.sleep(60)
"""


def install(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
def config(tmp_path: Path) -> RunnerConfig:
    for sub in ("work", "config", "kernel"):
        (tmp_path / sub).mkdir()
    return RunnerConfig(
        lang="python",
        work_dir=tmp_path / "work",
        config_dir=tmp_path / "config",
        dropbear_dir=tmp_path / "kernel",
        ttyd_path=tmp_path / "kernel" / "ttyd",
    )


# --------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------


def test_sshd_command_line_matches_upstream() -> None:
    argv = sshd_argv(2200, dropbear=("/opt/kernel/dropbear",), host_key=Path("/tmp/dropbear/dropbear_rsa_host_key"))
    assert " ".join(argv) == (
        "/opt/kernel/dropbear -r /tmp/dropbear/dropbear_rsa_host_key -E -F -g -w -K 15 -I 0 -p 0.0.0.0:2200"
    )


def test_sshd_takes_several_ports_but_never_a_string() -> None:
    argv = sshd_argv([2200, 2201], dropbear=("db",), host_key=Path("k"))
    assert argv[-4:] == ("-p", "0.0.0.0:2200", "-p", "0.0.0.0:2201")
    with pytest.raises(ValueError, match="integer ports"):
        sshd_argv("2200", dropbear=("db",), host_key=Path("k"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("present", "expected"), [(["zsh", "bash"], "zsh"), (["bash", "ash"], "bash"), (["ash"], "ash"), ([], "sh")]
)
def test_shell_choice(tmp_path: Path, present: list[str], expected: str) -> None:
    for name in present:
        (tmp_path / name).touch()
    assert pick_shell(tmp_path) == expected


def test_ttyd_command_line_attaches_tmux_except_for_ash() -> None:
    bash = ttyd_argv(7681, ttyd=Path("/opt/kernel/ttyd"), writable=True, shell="bash", bin_dir=Path("/bin"),
                     tmux=Path("/opt/kernel/tmux"))
    assert bash == (
        "/opt/kernel/ttyd", "-W", "-p", "7681", "/bin/bash", "-c", "export SHELL=/bin/bash; /opt/kernel/tmux -2 attach",
    )  # fmt: skip
    ash = ttyd_argv(7681, ttyd=Path("/t"), writable=False, shell="ash", bin_dir=Path("/bin"), tmux=Path("/opt/kernel/tmux"))
    assert ash == ("/t", "-p", "7681", "/bin/ash")


def test_ttyd_gets_w_only_where_its_help_lists_writable(tmp_path: Path) -> None:
    # docs/protocol.md §6.11: ttyd 1.7 is read-only without -W; older ttyds refuse -W.
    assert probe_ttyd(CHILDREN / "fake_ttyd.py") == TtydFlags(writable=True)
    assert probe_ttyd(install(tmp_path / "old" / "ttyd", OLD_TTYD)) == TtydFlags(writable=False)
    assert probe_ttyd(install(tmp_path / "quiet", "")) == TtydFlags(writable=False)
    missing = probe_ttyd(tmp_path / "nowhere")
    assert missing.writable is False and missing.problem is not None and "cannot run" in missing.problem


def test_a_ttyd_that_hangs_on_help_is_bounded(tmp_path: Path) -> None:
    flags = probe_ttyd(install(tmp_path / "ttyd", HANGING_TTYD), timeout_s=0.5)
    assert flags.writable is False
    assert flags.problem == f"`{tmp_path / 'ttyd'} --help` did not finish within 0.5 s"


def test_ttyd_is_found_where_agents_mount_it(tmp_path: Path) -> None:
    new, old = tmp_path / "opt-kernel" / "ttyd", tmp_path / "opt-backend.ai-bin" / "ttyd"
    assert find_ttyd(None, (new, old)) is None
    install(old, "")
    assert find_ttyd(None, (new, old)) == old  # an agent before 25.13.2: the krunner volume's ttyd
    install(new, "")
    assert find_ttyd(None, (new, old)) == new
    assert find_ttyd(tmp_path / "elsewhere", (new, old)) is None  # --ttyd-path is taken at its word


def test_default_ttyd_places_in_the_launchers(config: RunnerConfig, tmp_path: Path) -> None:
    config = attrs.evolve(config, ttyd_path=None)
    new, old = tmp_path / "opt-kernel" / "ttyd", tmp_path / "opt-backend.ai-bin" / "ttyd"
    found = intrinsic_launchers(config, ttyd_paths=(new, old))
    assert found.ttyd is None
    assert f"intrinsic ttyd disabled: {new} or {old} is not an executable file" in found.warnings
    old.parent.mkdir()
    old.symlink_to(CHILDREN / "fake_ttyd.py")
    found = intrinsic_launchers(config, ttyd_paths=(new, old))
    assert found.ttyd is not None
    assert found.ttyd(7681)[:4] == (str(old), "-W", "-p", "7681")


def test_the_intrinsics_are_probed_unless_the_setting_says_not(config: RunnerConfig) -> None:
    # docs/protocol.md §6.14: a TCP liveness probe with Kubernetes' numbers; `--no-intrinsic-probes` turns it off.
    assert intrinsic_launchers(config).probes == ProbeDefinitions(liveness=ProbeDefinition(tcp=TcpCheck()))
    assert intrinsic_launchers(attrs.evolve(config, intrinsic_probes=False)).probes is None


def test_missing_binaries_disable_the_intrinsics_with_warnings(config: RunnerConfig) -> None:
    found = intrinsic_launchers(config)
    assert found.sshd is None
    assert found.ttyd is None
    assert found.warnings == (
        f"intrinsic sshd disabled: no executable dropbear or dropbearmulti in {config.dropbear_dir}",
        f"intrinsic ttyd disabled: {config.ttyd_path} is not an executable file",
    )


def test_present_binaries_give_launchers(config: RunnerConfig, tmp_path: Path) -> None:
    install(config.dropbear_dir / "dropbear", "")
    install(config.ttyd_path, "")
    install(config.dropbear_dir / "tmux", "")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").touch()
    found = intrinsic_launchers(config, bin_dir=bin_dir, key_dir=Path("/tmp/dropbear"))
    assert found.warnings == ()
    assert found.sshd is not None
    assert found.ttyd is not None
    assert found.sshd(2200)[:3] == (str(config.dropbear_dir / "dropbear"), "-r", "/tmp/dropbear/dropbear_rsa_host_key")
    assert found.ttyd(7681) == (
        str(config.ttyd_path),
        "-p",
        "7681",
        str(bin_dir / "bash"),
        "-c",
        f"export SHELL={bin_dir / 'bash'}; {config.dropbear_dir / 'tmux'} -2 attach",
    )


def test_multicall_dropbear_and_missing_tmux(config: RunnerConfig, tmp_path: Path) -> None:
    install(config.dropbear_dir / "dropbearmulti", "")
    install(config.ttyd_path, "")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zsh").touch()
    found = intrinsic_launchers(config, bin_dir=bin_dir)
    assert found.sshd is not None
    assert found.sshd(2200)[:2] == (str(config.dropbear_dir / "dropbearmulti"), "dropbear")
    assert found.ttyd is not None
    assert found.ttyd(7681) == (str(config.ttyd_path), "-p", "7681", str(bin_dir / "zsh"))
    assert found.warnings == (f"ttyd will run a plain zsh: {config.dropbear_dir / 'tmux'} is not an executable file",)


# --------------------------------------------------------------------------------------------
# sshd key setup
# --------------------------------------------------------------------------------------------


def test_plan_for_a_fresh_container(config: RunnerConfig, tmp_path: Path) -> None:
    keytool = str(install(config.dropbear_dir / "dropbearkey", FAKE_DROPBEARKEY))
    convert = str(install(config.dropbear_dir / "dropbearconvert", FAKE_DROPBEARCONVERT))
    key_dir = tmp_path / "dropbear"
    plan = plan_sshd_setup(config, environ={}, key_dir=key_dir)
    ssh = config.work_dir / ".ssh"
    assert plan.steps == (
        RemoveKeyDir(path=key_dir),
        MakeDir(path=key_dir),
        MakeDir(path=ssh, mode=0o700),
        SavePublicKey(
            argv=(keytool, "-t", "rsa", "-s", "2048", "-f", str(key_dir / "id_dropbear")),
            dest=ssh / "authorized_keys",
            mode=0o600,
        ),
        RunTool(argv=(convert, "dropbear", "openssh", str(key_dir / "id_dropbear"), str(config.work_dir / "id_container"))),
        RunTool(argv=(keytool, "-t", "rsa", "-s", "2048", "-f", str(key_dir / "dropbear_rsa_host_key"))),
    )
    assert plan.warnings == ()


def test_plan_with_existing_keys_only_tightens_modes(config: RunnerConfig, tmp_path: Path) -> None:
    install(config.dropbear_dir / "dropbearkey", FAKE_DROPBEARKEY)
    ssh = config.work_dir / ".ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text("ssh-rsa existing")
    plan = plan_sshd_setup(config, environ={}, key_dir=tmp_path / "dropbear")
    assert TightenMode(path=ssh, mode=0o700) in plan.steps
    assert TightenMode(path=ssh / "authorized_keys", mode=0o600) in plan.steps
    assert not any(isinstance(step, SavePublicKey) for step in plan.steps)


def test_the_agents_host_key_is_served_and_none_is_generated(config: RunnerConfig, tmp_path: Path) -> None:
    # docs/protocol.md §6.10: agents since 26.3 write <config dir>/ssh/dropbear_rsa_host_key.
    install(config.dropbear_dir / "dropbear", "")
    keytool = str(install(config.dropbear_dir / "dropbearkey", FAKE_DROPBEARKEY))
    install(config.dropbear_dir / "dropbearconvert", FAKE_DROPBEARCONVERT)
    found = intrinsic_launchers(config, key_dir=tmp_path / "dropbear")
    assert found.agent_host_key is None
    assert found.sshd is not None and found.sshd(2200)[1:3] == ("-r", str(tmp_path / "dropbear" / "dropbear_rsa_host_key"))
    agent_key = config.config_dir / "ssh" / "dropbear_rsa_host_key"
    agent_key.parent.mkdir()
    agent_key.write_text("the agent's key")
    found = intrinsic_launchers(config, key_dir=tmp_path / "dropbear")
    assert found.agent_host_key == agent_key
    assert found.sshd is not None and found.sshd(2200)[1:3] == ("-r", str(agent_key))
    plan = plan_sshd_setup(config, environ={}, key_dir=tmp_path / "dropbear", agent_host_key=found.agent_host_key)
    assert not [step for step in plan.steps if isinstance(step, RunTool) and step.argv[0] == keytool]
    assert apply_sshd_setup(plan, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}) == []
    assert not (tmp_path / "dropbear" / "dropbear_rsa_host_key").exists()
    assert (tmp_path / "dropbear" / "id_dropbear").exists()  # the user's login key is still made when there is none
    assert agent_key.read_text() == "the agent's key"


def test_plan_without_dropbearkey_is_a_warning(config: RunnerConfig) -> None:
    plan = plan_sshd_setup(config, environ={})
    assert plan.steps == ()
    assert plan.warnings == (f"sshd key setup skipped: no executable dropbearkey in {config.dropbear_dir}",)


def test_apply_generates_keys_and_survives_a_container_restart(config: RunnerConfig, tmp_path: Path) -> None:
    install(config.dropbear_dir / "dropbearkey", FAKE_DROPBEARKEY)
    install(config.dropbear_dir / "dropbearconvert", FAKE_DROPBEARCONVERT)
    key_dir = tmp_path / "dropbear"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    assert apply_sshd_setup(plan_sshd_setup(config, environ={}, key_dir=key_dir), env=env) == []
    authorized = config.work_dir / ".ssh" / "authorized_keys"
    # The key line is found by content, not by position (docs/protocol.md §10.5 item 44), and written without a newline.
    assert authorized.read_text() == "ssh-rsa AAAAfakeid_dropbear root@container"
    assert stat.S_IMODE(authorized.stat().st_mode) == 0o600
    assert stat.S_IMODE((config.work_dir / ".ssh").stat().st_mode) == 0o700
    assert (config.work_dir / "id_container").read_text().startswith("openssh private key for ")
    assert (key_dir / "dropbear_rsa_host_key").is_file()
    # /tmp survived a container restart: the host key exists, and upstream's dropbearkey would now fail.
    assert apply_sshd_setup(plan_sshd_setup(config, environ={}, key_dir=key_dir), env=env) == []
    assert authorized.read_text() == "ssh-rsa AAAAfakeid_dropbear root@container"


def test_tool_failure_is_an_sshd_init_error(config: RunnerConfig, tmp_path: Path) -> None:
    install(config.dropbear_dir / "dropbearkey", FAILING_TOOL)
    plan = plan_sshd_setup(config, environ={}, key_dir=tmp_path / "dropbear")
    with pytest.raises(SshdSetupError, match=r"^sshd init error: no entropy$"):
        apply_sshd_setup(plan, env={})


def test_cluster_config_from_replicas_is_appended_once(config: RunnerConfig, tmp_path: Path) -> None:
    install(config.dropbear_dir / "dropbearkey", FAKE_DROPBEARKEY)
    cluster = config.config_dir / "ssh"
    cluster.mkdir()
    (cluster / "id_cluster").write_text("private")
    (cluster / "id_cluster.pub").write_text("ssh-rsa CLUSTER cluster\n")
    environ = {"BACKENDAI_CLUSTER_REPLICAS": "main:1,sub:2"}
    key_dir = tmp_path / "dropbear"
    for _ in range(2):  # docs/protocol.md §10.5 item 42: upstream appended the blocks and the key again on every start
        apply_sshd_setup(plan_sshd_setup(config, environ=environ, key_dir=key_dir), env={})
    ssh_config = (config.work_dir / ".ssh" / "config").read_text()
    identity = f"\tStrictHostKeyChecking no\n\tIdentityFile {cluster / 'id_cluster'}\n"
    assert ssh_config == f"Host main*\n\tPort 2200\n{identity}Host sub*\n\tPort 2200\n{identity}"
    authorized = (config.work_dir / ".ssh" / "authorized_keys").read_text()
    assert authorized.count("ssh-rsa CLUSTER cluster") == 1
    assert authorized.startswith("ssh-rsa AAAAfakeid_dropbear root@container\nssh-rsa CLUSTER cluster\n")


def test_cluster_config_from_port_mapping(config: RunnerConfig, tmp_path: Path) -> None:
    install(config.dropbear_dir / "dropbearkey", FAKE_DROPBEARKEY)
    cluster = config.config_dir / "ssh"
    cluster.mkdir()
    (cluster / "id_cluster").write_text("private")
    (cluster / "port-mapping.json").write_text(json.dumps({"sub1": ["10.0.0.5", 30022]}))
    plan = plan_sshd_setup(config, environ={}, key_dir=tmp_path / "dropbear")
    blocks = [step for step in plan.steps if isinstance(step, AppendOnce)]
    assert blocks == [
        AppendOnce(
            path=config.work_dir / ".ssh" / "config",
            text=(
                "Host sub1\n\tHostName 10.0.0.5\n\tPort 30022\n"
                f"\tStrictHostKeyChecking no\n\tIdentityFile {cluster / 'id_cluster'}\n"
            ),
            marker="Host sub1",
        )
    ]


def test_bad_port_mapping_and_replicas_are_warnings(config: RunnerConfig, tmp_path: Path) -> None:
    install(config.dropbear_dir / "dropbearkey", FAKE_DROPBEARKEY)
    install(config.dropbear_dir / "dropbearconvert", FAKE_DROPBEARCONVERT)
    cluster = config.config_dir / "ssh"
    cluster.mkdir()
    (cluster / "id_cluster").write_text("private")
    plan = plan_sshd_setup(config, environ={"BACKENDAI_CLUSTER_REPLICAS": "main"}, key_dir=tmp_path / "dropbear")
    assert plan.warnings == ("bad BACKENDAI_CLUSTER_REPLICAS entry 'main'; expected role:count; using main:1",)
    (cluster / "port-mapping.json").write_text("[1, 2]")
    plan = plan_sshd_setup(config, environ={}, key_dir=tmp_path / "dropbear")
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith(f"ignoring {cluster / 'port-mapping.json'}: expected {{host: [hostname, port]}}")


def test_parse_cluster_replicas() -> None:
    assert parse_cluster_replicas(None) == (("main", 1),)
    assert parse_cluster_replicas("main:1,sub:3") == (("main", 1), ("sub", 3))
    with pytest.raises(ValueError, match="role:count"):
        parse_cluster_replicas("main:x")
