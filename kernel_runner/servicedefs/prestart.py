"""Runs the five whitelisted prestart actions (docs/protocol.md §6.5) with bounded waits, in a service's helper thread."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kernel_runner.excerpts import excerpt
from kernel_runner.servicedefs.errors import ServiceStartError
from kernel_runner.servicedefs.schema import Log, Mkdir, PrestartAction, RunCommand, WriteFile, WriteTempfile
from kernel_runner.servicedefs.template import interpolate

# Called as log(level, text); loguru's `logger.log` fits as is. The text is never used as a format string.
PrestartLog = Callable[[str, str], object]

# Upstream waited for run_command without any bound (docs/protocol.md §6.5); the agent gives a whole start 10 s (§6.12).
DEFAULT_COMMAND_TIMEOUT_S = 5.0
_REAP_GRACE_S = 1.0
_MAX_LOG_MESSAGE_CHARS = 1000
_PERMISSION_BITS = 0o777


@attrs.frozen(kw_only=True)
class CommandOutput:
    returncode: int
    stdout: str
    stderr: str


class CommandTimedOut(Exception):
    """A bounded command outlived its budget; its process group has been killed."""


def run_prestart(
    actions: Sequence[PrestartAction],
    *,
    env: Mapping[str, str],
    work_dir: Path,
    variables: Mapping[str, Any],
    log: PrestartLog,
    timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
    confined: bool = False,
) -> dict[str, Any]:
    """Run the actions in order and return the refs they defined, for the templates that follow.

    Each action sees `variables` plus the refs of the actions before it (docs/protocol.md §6.4). Unlike upstream, refs are
    returned to the caller instead of leaking into a process-global map (docs/protocol.md §10.4 item 35). Relative paths
    are taken from `work_dir`, which is what upstream's process-wide current directory was.

    `confined` is for actions that came over the wire (a model's pre_start_actions, docs/protocol.md §2.8): their file
    paths must stay inside the work dir, symlinks followed, their modes are permission bits only, and what they log
    is quoted briefly.

    Raises:
        ServiceStartError: the reply text names the action, its index and the reason.
    """
    refs: dict[str, Any] = {}
    for index, action in enumerate(actions):
        scope = {**variables, **refs}
        try:
            result = _run_one(action, scope=scope, env=env, work_dir=work_dir, log=log, timeout_s=timeout_s,
                              confined=confined)
        except ServiceStartError:
            raise
        except (OSError, UnicodeError, ValueError) as exc:
            reason = excerpt(str(exc), 300, quote=False)
            raise ServiceStartError(f"prestart action #{index} ({action.ACTION}) failed: {reason}") from exc
        if action.ref is not None:
            # docs/protocol.md §6.5: actions without a result store None, which renders as "None".
            refs[action.ref] = result
    return refs


def _run_one(
    action: PrestartAction,
    *,
    scope: Mapping[str, Any],
    env: Mapping[str, str],
    work_dir: Path,
    log: PrestartLog,
    timeout_s: float,
    confined: bool,
) -> Any:
    match action:
        case WriteFile(args=args):
            path = _file_path(work_dir, interpolate(args.filename, scope), confined=confined)
            mode = _file_mode(args.mode, confined=confined)
            text = "".join(interpolate(line, scope) + "\n" for line in args.body)  # a newline after each line (V)
            # Upstream opened append=true files with truncation (docs/protocol.md §10.4 item 33); we really append.
            with path.open("a" if args.append else "w", encoding="utf-8") as fh:
                fh.write(text)
            path.chmod(mode)
            return None
        case WriteTempfile(args=args):
            mode = _file_mode(args.mode, confined=confined)
            text = "".join(interpolate(line, scope) for line in args.body)  # no newline added (docs/protocol.md §6.5)
            fd, name = tempfile.mkstemp(suffix=".py")  # never deleted: the service reads it after we return
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(name, mode)
            return name
        case RunCommand(args=args):
            argv = [interpolate(piece, scope) for piece in args.command]
            if not argv:
                raise ServiceStartError("prestart run_command has an empty command")
            try:
                done = run_bounded(argv, env=env, cwd=work_dir, timeout_s=timeout_s)
            except CommandTimedOut as exc:
                raise ServiceStartError(f"prestart run_command timed out after {timeout_s:g} s: {argv[0]}") from exc
            except FileNotFoundError as exc:
                raise ServiceStartError(f"prestart run_command: the executable file is not found: {argv[0]}") from exc
            except PermissionError as exc:
                raise ServiceStartError(f"prestart run_command: the target file is not executable: {argv[0]}") from exc
            if done.returncode != 0:
                # Upstream ignores the exit code (docs/protocol.md §6.5); so do we, but the log says so.
                log("WARNING", f"prestart run_command {argv[0]} exited with code {done.returncode}")
            return {"out": done.stdout, "err": done.stderr}
        case Mkdir(args=args):
            _file_path(work_dir, interpolate(args.path, scope), confined=confined).mkdir(parents=True, exist_ok=True)
            return None
        case Log(args=args):
            message = interpolate(args.message, scope)
            log("DEBUG" if args.debug else "INFO", excerpt(message, _MAX_LOG_MESSAGE_CHARS) if confined else message)
            return None


def _file_path(work_dir: Path, rendered: str, *, confined: bool) -> Path:
    """Relative paths are taken from the work dir; a confined one must also end inside it (docs/protocol.md §2.8).

    Raises:
        ValueError: a confined path that is absolute, or that `..` or a symlink leads out of the work dir.
    """
    if not confined:
        return work_dir / rendered
    if Path(rendered).is_absolute():
        raise ValueError(f"the path {excerpt(rendered)} is absolute; a model's files stay inside the work dir")
    root = work_dir.resolve()
    try:
        target = (root / rendered).resolve()
    except RuntimeError as exc:  # a symlink loop
        raise ValueError(f"the path {excerpt(rendered)} cannot be resolved: {exc}") from None
    if not target.is_relative_to(root):
        raise ValueError(f"the path {excerpt(rendered)} leads outside the work dir (to {excerpt(str(target))})")
    return target


def _file_mode(mode: str, *, confined: bool) -> int:
    bits = int(mode, 8)
    if confined and bits & ~_PERMISSION_BITS:
        raise ValueError(f"mode {mode} sets more than permission bits (setuid, setgid or sticky)")
    return bits


def run_bounded(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout_s: float) -> CommandOutput:
    """Run a short helper command to completion with a hard bound, killing its whole group on timeout.

    The command gets its own session so that grandchildren holding our pipes die with it; otherwise
    `communicate()` after a kill could wait for ever on their open pipe ends.

    Raises:
        CommandTimedOut: after the group was killed.
        OSError: the program could not be started (FileNotFoundError, PermissionError, ...).
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CommandTimedOut(f"{argv[0]} did not finish within {timeout_s:g} s") from None
    # Decoded leniently: upstream's strict UTF-8 decoding could fail a start on odd output (docs/protocol.md §10.4 item 34).
    return CommandOutput(
        returncode=proc.returncode,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=_REAP_GRACE_S)
    except subprocess.TimeoutExpired:
        # Something that left the group still holds a pipe: stop reading and reap only our child.
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.kill()
        proc.wait(timeout=_REAP_GRACE_S)
