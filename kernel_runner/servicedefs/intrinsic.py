"""The intrinsic sshd (dropbear) and ttyd services: their command lines and the sshd key-setup plan.

See docs/protocol.md §6.10-6.11.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Union

import attrs

from kernel_runner.config import RunnerConfig
from kernel_runner.servicedefs.errors import SshdSetupError
from kernel_runner.servicedefs.prestart import CommandTimedOut, run_bounded
from kernel_runner.servicedefs.schema import ProbeDefinition, ProbeDefinitions, TcpCheck

DEFAULT_KEY_DIR = Path("/tmp/dropbear")
HOST_KEY_NAME = "dropbear_rsa_host_key"
USER_KEY_NAME = "id_dropbear"
# docs/protocol.md §6.11: the first shell found, else sh; ash gets no `-c` (it is busybox without tmux in practice).
SHELL_ORDER: tuple[str, ...] = ("zsh", "bash", "ash")
DEFAULT_KEY_TOOL_TIMEOUT_S = 30.0
# docs/protocol.md §6.11: agents since 25.13.2 mount ttyd in /opt/kernel; older ones ship it in the krunner volume.
TTYD_PATHS: tuple[Path, ...] = (Path("/opt/kernel/ttyd"), Path("/opt/backend.ai/bin/ttyd"))
TTYD_PROBE_TIMEOUT_S = 2.0

# A launcher turns the requested port into the argv to spawn; ServiceCatalog.resolve takes one per intrinsic.
IntrinsicLauncher = Callable[[int], tuple[str, ...]]
# docs/protocol.md §6.14: sshd and ttyd are restarted when their port stops accepting connections (Kubernetes'
# numbers: every 10 s, 1 s to connect, 3 failures in a row). `--no-intrinsic-probes` turns it off.
INTRINSIC_PROBES = ProbeDefinitions(liveness=ProbeDefinition(tcp=TcpCheck()))


# --------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------


def sshd_argv(port: int | Sequence[int], *, dropbear: Sequence[str], host_key: Path) -> tuple[str, ...]:
    """docs/protocol.md §6.10: foreground dropbear, log to stderr, no password or root login, 15 s keepalive, no idle timeout."""
    ports = (port,) if isinstance(port, int) else tuple(port)
    if not ports or not all(isinstance(p, int) and not isinstance(p, bool) for p in ports):
        # Upstream iterated a string port character by character (docs/protocol.md §10.5 item 43).
        raise ValueError(f"sshd needs integer ports, got {port!r}")
    argv = [*dropbear, "-r", str(host_key), "-E", "-F", "-g", "-w", "-K", "15", "-I", "0"]
    for number in ports:
        argv += ["-p", f"0.0.0.0:{number}"]
    return tuple(argv)


def pick_shell(bin_dir: Path = Path("/bin")) -> str:
    """docs/protocol.md §6.11: zsh, else bash, else ash, else sh."""
    return next((name for name in SHELL_ORDER if (bin_dir / name).exists()), "sh")


def ttyd_argv(port: int, *, ttyd: Path, writable: bool, shell: str, bin_dir: Path, tmux: Path | None) -> tuple[str, ...]:
    """docs/protocol.md §6.11: every tab attaches to the one tmux session that the agent's ~/.tmux.conf creates."""
    shell_path = str(bin_dir / shell)
    argv = [str(ttyd), *(["-W"] if writable else []), "-p", str(port), shell_path]
    if shell != "ash" and tmux is not None:
        argv += ["-c", f"export SHELL={shell_path}; {tmux} -2 attach"]
    return tuple(argv)


@attrs.frozen(kw_only=True)
class TtydFlags:
    """What a ttyd binary takes, as its `--help` says; `problem` when it could not be asked (then: no -W)."""

    writable: bool
    problem: str | None = None


def probe_ttyd(ttyd: Path, *, timeout_s: float = TTYD_PROBE_TIMEOUT_S) -> TtydFlags:
    """Whether this ttyd has `-W` (docs/protocol.md §6.11).

    ttyd 1.7 made the terminal read-only unless `-W` is given, and the ttyds before it refuse `-W` and exit, so the
    flag goes by what the binary says it takes. Blocking and bounded: called once at start-up, never on an actor's thread.
    """
    try:
        done = run_bounded((str(ttyd), "--help"), env={"PATH": os.defpath}, cwd=Path("/"), timeout_s=timeout_s)
    except CommandTimedOut:
        return TtydFlags(writable=False, problem=f"`{ttyd} --help` did not finish within {timeout_s:g} s")
    except OSError as exc:
        return TtydFlags(writable=False, problem=f"cannot run `{ttyd} --help`: {exc}")
    return TtydFlags(writable="--writable" in done.stdout or "--writable" in done.stderr)


@attrs.frozen(kw_only=True)
class Intrinsics:
    """What the runner can offer as `sshd`/`ttyd`; None means the binary is missing (see warnings)."""

    sshd: IntrinsicLauncher | None
    ttyd: IntrinsicLauncher | None
    # The agent's host key that sshd serves (docs/protocol.md §6.10); None: the runner generates one at start-up.
    agent_host_key: Path | None = None
    warnings: tuple[str, ...] = ()
    # What sshd and ttyd are probed with (docs/protocol.md §6.14); None: nothing.
    probes: ProbeDefinitions | None = None


def intrinsic_launchers(config: RunnerConfig, *, bin_dir: Path = Path("/bin"), key_dir: Path = DEFAULT_KEY_DIR,
                        ttyd_paths: Sequence[Path] = TTYD_PATHS) -> Intrinsics:
    """Look the binaries up once; a missing one disables that service with a warning instead of failing later.

    Blocking (it asks ttyd which flags it takes), so it runs at start-up before any actor, never on an actor's thread.
    """
    warnings: list[str] = []
    sshd: IntrinsicLauncher | None = None
    # docs/protocol.md §6.10: agents since 26.3 put the sshd host key in the config dir.
    offered = config.config_dir / "ssh" / HOST_KEY_NAME
    host_key = offered if offered.is_file() and os.access(offered, os.R_OK) else None
    if host_key is None and offered.is_file():
        warnings.append(f"cannot read the agent's sshd host key {offered}: the runner makes its own")
    dropbear = _dropbear_tool(config.dropbear_dir, "dropbear")
    if dropbear is None:
        warnings.append(f"intrinsic sshd disabled: no executable dropbear or dropbearmulti in {config.dropbear_dir}")
    else:
        sshd = functools.partial(sshd_argv, dropbear=dropbear, host_key=host_key or key_dir / HOST_KEY_NAME)
    ttyd: IntrinsicLauncher | None = None
    ttyd_path = find_ttyd(config.ttyd_path, ttyd_paths)
    if ttyd_path is None:
        where = config.ttyd_path or " or ".join(str(path) for path in ttyd_paths)
        warnings.append(f"intrinsic ttyd disabled: {where} is not an executable file")
    else:
        flags = probe_ttyd(ttyd_path)
        if flags.problem is not None:
            warnings.append(f"{flags.problem}: ttyd runs without -W (read-only, if it is ttyd 1.7 or later)")
        shell = pick_shell(bin_dir)
        tmux: Path | None = config.dropbear_dir / "tmux"
        if shell != "ash" and not _is_executable(config.dropbear_dir / "tmux"):
            warnings.append(f"ttyd will run a plain {shell}: {config.dropbear_dir / 'tmux'} is not an executable file")
            tmux = None
        ttyd = functools.partial(ttyd_argv, ttyd=ttyd_path, writable=flags.writable, shell=shell, bin_dir=bin_dir, tmux=tmux)
    return Intrinsics(sshd=sshd, ttyd=ttyd, agent_host_key=host_key, warnings=tuple(warnings),
                      probes=INTRINSIC_PROBES if config.intrinsic_probes else None)


def find_ttyd(configured: Path | None, candidates: Sequence[Path] = TTYD_PATHS) -> Path | None:
    """`--ttyd-path` when given (it must be there), else the first executable of the places agents mount ttyd."""
    found = (configured,) if configured is not None else candidates
    return next((path for path in found if _is_executable(path)), None)


# --------------------------------------------------------------------------------------------
# sshd key preparation (docs/protocol.md §6.10 steps 1-6) as a plan of steps, executed later by apply_sshd_setup
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RemoveKeyDir:
    """24.03.5's fix for docs/protocol.md §10.5 item 41: dropbearkey refuses to overwrite keys left from a container restart."""

    path: Path


@attrs.frozen(kw_only=True)
class MakeDir:
    path: Path
    mode: int | None = None


@attrs.frozen(kw_only=True)
class RunTool:
    """A key tool that must exit 0; otherwise `sshd init error: <stderr>` and the remaining steps are skipped."""

    argv: tuple[str, ...]


@attrs.frozen(kw_only=True)
class SavePublicKey:
    """Run dropbearkey and write the public-key line of its output (without a newline) to `dest`."""

    argv: tuple[str, ...]
    dest: Path
    mode: int


@attrs.frozen(kw_only=True)
class TightenMode:
    """chmod to `mode` only if group or other bits are set; a failure is a warning (docs/protocol.md §6.10 step 3)."""

    path: Path
    mode: int


@attrs.frozen(kw_only=True)
class AppendOnce:
    """Append `text` unless a line equal to `marker` is already there (docs/protocol.md §10.5 item 42: upstream piled up)."""

    path: Path
    text: str
    marker: str
    mode: int | None = None


SshdStep = Union[RemoveKeyDir, MakeDir, RunTool, SavePublicKey, TightenMode, AppendOnce]


@attrs.frozen(kw_only=True)
class SshdSetupPlan:
    steps: tuple[SshdStep, ...]
    warnings: tuple[str, ...] = ()


def plan_sshd_setup(config: RunnerConfig, *, environ: Mapping[str, str], key_dir: Path = DEFAULT_KEY_DIR,
                    agent_host_key: Path | None = None) -> SshdSetupPlan:
    """Decide the key-setup steps from what exists now; only reads files (port-mapping.json, id_cluster.pub).

    `environ` is where BACKENDAI_CLUSTER_REPLICAS is read (upstream: the runner's own environment). With the agent's
    `agent_host_key` (Intrinsics.agent_host_key) no host key is generated: sshd serves that one (docs/protocol.md §6.10).
    """
    warnings: list[str] = []
    keytool = _dropbear_tool(config.dropbear_dir, "dropbearkey")
    if keytool is None:
        return SshdSetupPlan(steps=(), warnings=(f"sshd key setup skipped: no executable dropbearkey in {config.dropbear_dir}",))
    ssh_dir = config.work_dir / ".ssh"
    authorized_keys = ssh_dir / "authorized_keys"
    cluster_dir = config.config_dir / "ssh"
    id_cluster = cluster_dir / "id_cluster"
    steps: list[SshdStep] = [RemoveKeyDir(path=key_dir), MakeDir(path=key_dir)]
    if not authorized_keys.is_file():
        user_key = key_dir / USER_KEY_NAME
        steps.append(MakeDir(path=ssh_dir, mode=0o700))
        steps.append(
            SavePublicKey(argv=(*keytool, "-t", "rsa", "-s", "2048", "-f", str(user_key)), dest=authorized_keys, mode=0o600)
        )
        convert = _dropbear_tool(config.dropbear_dir, "dropbearconvert")
        if convert is None:
            warnings.append(f"no dropbearconvert in {config.dropbear_dir}: {config.work_dir / 'id_container'} not made")
        else:
            id_container = config.work_dir / "id_container"
            steps.append(RunTool(argv=(*convert, "dropbear", "openssh", str(user_key), str(id_container))))
    else:
        steps.append(TightenMode(path=ssh_dir, mode=0o700))
        steps.append(TightenMode(path=authorized_keys, mode=0o600))
    if agent_host_key is None:
        steps.append(RunTool(argv=(*keytool, "-t", "rsa", "-s", "2048", "-f", str(key_dir / HOST_KEY_NAME))))
    if id_cluster.is_file():
        steps.append(MakeDir(path=ssh_dir, mode=0o700))
        blocks, block_warnings = _cluster_blocks(cluster_dir, id_cluster, environ)
        warnings += block_warnings
        steps += [AppendOnce(path=ssh_dir / "config", text=text, marker=marker) for marker, text in blocks]
    public = cluster_dir / "id_cluster.pub"
    if public.is_file():
        try:
            key = public.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            warnings.append(f"cannot read {public}: {exc}")
        else:
            if key:
                steps.append(AppendOnce(path=authorized_keys, text=f"\n{key}\n", marker=key, mode=0o600))
    return SshdSetupPlan(steps=tuple(steps), warnings=tuple(warnings))


def parse_cluster_replicas(text: str | None) -> tuple[tuple[str, int], ...]:
    """`role:count,role:count` (docs/protocol.md §6.10 step 5), default `main:1`; a bad entry raises ValueError."""
    pairs: list[tuple[str, int]] = []
    for item in (text or "main:1").split(","):
        role, sep, count = item.strip().partition(":")
        if not role or not sep or not count.strip().isdigit():
            raise ValueError(f"bad BACKENDAI_CLUSTER_REPLICAS entry {item!r}; expected role:count")
        pairs.append((role, int(count)))
    return tuple(pairs)


def _cluster_blocks(cluster_dir: Path, id_cluster: Path, environ: Mapping[str, str]) -> tuple[list[tuple[str, str]], list[str]]:
    warnings: list[str] = []
    tail = f"\tStrictHostKeyChecking no\n\tIdentityFile {id_cluster}\n"
    mapping_file = cluster_dir / "port-mapping.json"
    if mapping_file.exists():
        try:
            mapping = json.loads(mapping_file.read_text(encoding="utf-8"))
            entries = [(str(host), str(pair[0]), int(pair[1])) for host, pair in mapping.items()]
        except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            return [], [f"ignoring {mapping_file}: expected {{host: [hostname, port]}} ({exc})"]
        return [
            (f"Host {host}", f"Host {host}\n\tHostName {hostname}\n\tPort {port}\n{tail}") for host, hostname, port in entries
        ], warnings
    try:
        replicas = parse_cluster_replicas(environ.get("BACKENDAI_CLUSTER_REPLICAS"))
    except ValueError as exc:
        warnings.append(f"{exc}; using main:1")
        replicas = (("main", 1),)
    return [(f"Host {role}*", f"Host {role}*\n\tPort 2200\n{tail}") for role, _count in replicas], warnings


def apply_sshd_setup(plan: SshdSetupPlan, *, env: Mapping[str, str], timeout_s: float = DEFAULT_KEY_TOOL_TIMEOUT_S) -> list[str]:
    """Execute the plan in order (blocking, each tool bounded by `timeout_s`); returns the warnings met.

    Raises:
        SshdSetupError: a key tool failed (docs/protocol.md §6.10: the rest is skipped; the runner keeps going).
    """
    warnings = list(plan.warnings)
    for step in plan.steps:
        match step:
            case RemoveKeyDir(path=path):
                _remove_tree(path)
            case MakeDir(path=path, mode=mode):
                path.mkdir(parents=True, exist_ok=True)
                if mode is not None:
                    path.chmod(mode)
            case RunTool(argv=argv):
                _run_tool(argv, env=env, timeout_s=timeout_s)
            case SavePublicKey(argv=argv, dest=dest, mode=mode):
                out = _run_tool(argv, env=env, timeout_s=timeout_s)
                dest.write_text(_public_key_line(out, argv), encoding="utf-8")
                dest.chmod(mode)
            case TightenMode(path=path, mode=mode):
                try:
                    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                        path.chmod(mode)
                except OSError as exc:
                    warnings.append(f"could not fix the permissions of {path}: {exc}")
            case AppendOnce(path=path, text=text, marker=marker, mode=mode):
                existing = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
                if marker not in (line.strip() for line in existing.splitlines()):
                    with path.open("a", encoding="utf-8") as fh:
                        fh.write(text)
                    if mode is not None:
                        path.chmod(mode)
    return warnings


def _run_tool(argv: tuple[str, ...], *, env: Mapping[str, str], timeout_s: float) -> str:
    try:
        done = run_bounded(argv, env=env, cwd=Path("/"), timeout_s=timeout_s)
    except CommandTimedOut as exc:
        raise SshdSetupError(f"sshd init error: {argv[0]} did not finish within {timeout_s:g} s") from exc
    except OSError as exc:
        raise SshdSetupError(f"sshd init error: cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise SshdSetupError(f"sshd init error: {done.stderr.strip()}")
    return done.stdout


def _public_key_line(output: str, argv: tuple[str, ...]) -> str:
    # Upstream took output line 2 by position (docs/protocol.md §10.5 item 44); we take the line that is a key.
    for line in output.splitlines():
        if line.startswith(("ssh-", "ecdsa-", "sk-")):
            return line.strip()
    raise SshdSetupError(f"sshd init error: no public key in the output of {argv[0]}")


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _dropbear_tool(directory: Path, name: str) -> tuple[str, ...] | None:
    """The tool itself, or the multi-call binary that later upstream switched to (24.03.8)."""
    if _is_executable(directory / name):
        return (str(directory / name),)
    multi = directory / "dropbearmulti"
    if _is_executable(multi):
        return (str(multi), name)
    return None
