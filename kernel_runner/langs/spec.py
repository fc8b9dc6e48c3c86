"""The records a language is made of (LangSpec and its parts) and the plans the planners hand to the runner."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol, Union

import attrs

from kernel_runner.messages import frozen_value

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
# What `interrupt` does when no subprocess is running; a running subprocess always gets SIGINT first (docs/protocol.md §4.5).
InterruptMode = Literal["jupyter", "none", "worker"]

BATCH_MODE_VAR = "_BACKEND_BATCH_MODE"  # docs/protocol.md §5.4
INPUT_SOCKET_VAR = "_BACKEND_INPUT_SOCKET"  # ours: lets input helpers find a non-default socket path
INPUT_PYTHON_VAR = "_BACKEND_INPUT_PYTHON"  # ours: the interpreter the Java stdin helper runs
DEFAULT_INPUT_SOCKET = Path("/tmp/bai-user-input.sock")  # docs/protocol.md §5.6
# Shipped inside the package and put on PYTHONPATH for batch children only (hooks.batch_site_dir says why).
BATCH_SITE_DIR = Path(__file__).resolve().parent / "batch_site"


# --------------------------------------------------------------------------------------------
# Filesystem view: every probe goes through this so tests can fake the filesystem
# --------------------------------------------------------------------------------------------


class FsView(Protocol):
    def is_file(self, path: Path) -> bool: ...

    def is_dir(self, path: Path) -> bool: ...

    def is_executable(self, path: Path) -> bool:
        """A regular file we may execute."""
        ...

    def glob(self, root: Path, pattern: str) -> list[Path]:
        """Sorted matches (hidden names skipped, `**` recursive); relative to root unless pattern is absolute."""
        ...


@attrs.frozen
class LocalFs:
    """The real filesystem."""

    def is_file(self, path: Path) -> bool:
        return path.is_file()

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def is_executable(self, path: Path) -> bool:
        return path.is_file() and os.access(path, os.X_OK)

    def glob(self, root: Path, pattern: str) -> list[Path]:
        # glob.glob, not Path.glob: it skips dot-folders, so `**/*.c` never walks ~/.local or ~/.cache.
        return sorted(Path(p) for p in glob.glob(pattern, root_dir=root, recursive=True))


LOCAL_FS = LocalFs()


# --------------------------------------------------------------------------------------------
# PATH promotions (docs/protocol.md §1.4 steps 6-7)
# --------------------------------------------------------------------------------------------


@frozen_value
class Promote:
    """Put `path` first in PATH; with `if_dir`, only when that directory exists. `{home}` is the work dir."""

    path: str
    if_dir: str | None = None


@frozen_value
class PromoteFirstMatch:
    """Put the first directory matching `pattern` (sorted, so the choice is stable) first in PATH."""

    pattern: str


PathPromotion = Union[Promote, PromoteFirstMatch]


# --------------------------------------------------------------------------------------------
# Query modes (docs/protocol.md §4, §8)
# --------------------------------------------------------------------------------------------


@frozen_value
class JupyterQuery:
    """`code` runs in a Jupyter kernel whose kernelspec name matches `kernelspec_name` (docs/protocol.md §4.1)."""

    kernelspec_name: str

    def pick(self, available: Sequence[str]) -> str | None:
        """Exact name, else first name starting with it, else first containing it; an empty name matches nothing.

        Upstream takes the first substring match, so an empty name matched any kernel (docs/protocol.md §10.2 #14).
        """
        if not self.kernelspec_name:
            return None
        for accept in (str.__eq__, str.startswith, str.__contains__):
            for name in available:
                if accept(name, self.kernelspec_name):
                    return name
        return None


@frozen_value
class CompileAndRunQuery:
    """`code` is written to a temp source file, then shell steps compile and/or run it (docs/protocol.md §8.1).

    Step templates know `{runtime}`, `{src}` (the source, relative to the work dir) and `{out}` (the run's
    private temp dir, where binaries go instead of the user's `./main`, docs/protocol.md §10.6 #48). All are shell-quoted.
    """

    suffix: str
    steps: tuple[str, ...] = ()
    prologue: str = ""
    hook: str | None = None  # name in hooks.QUERY_HOOKS that builds the whole plan instead (java)


@frozen_value
class TerminalQuery:
    """`code` is a `%command` for the pty terminal (docs/protocol.md §8.3); the shell is $SHELL or /bin/bash."""


POLLY_HANDLER = "aws_polly"  # ExternalQuery.handler of vendor.aws_polly: Amazon Polly speech synthesis (docs/protocol.md §8.5)


@frozen_value
class ExternalQuery:
    """`code` goes to a dedicated delegate outside langs, named by `handler`.

    POLLY_HANDLER (vendor.aws_polly) is the only one: the runtime starts the Polly child for it and the language
    runner hands it each `code` (docs/protocol.md §8.5). Any other handler answers "not part of this runner".
    """

    handler: str


@frozen_value
class NoQuery:
    """`code` finishes with 127 and this message (docs/protocol.md §4.2 "query mode is disabled")."""

    reason: str


QueryMode = Union[JupyterQuery, CompileAndRunQuery, TerminalQuery, ExternalQuery, NoQuery]


# --------------------------------------------------------------------------------------------
# Plans: what the runner actor should do; nothing here spawns anything
# --------------------------------------------------------------------------------------------


@frozen_value
class ShellStep:
    """Run `command` with `/bin/sh -c` in the work dir, env = child env overlaid with `env_extra`."""

    command: str
    env_extra: Mapping[str, str] = attrs.field(factory=dict)


@frozen_value
class NoStep:
    """Run nothing and finish with `exit_code`.

    `stderr_text` is for the user (sent as stderr output before `finished`); `log_text` is for the runner log.
    Upstream only logged, and its logs reached the user as stderr (docs/protocol.md §9.2); we no longer forward logs.
    """

    exit_code: int
    stderr_text: str | None = None
    log_text: str | None = None
    log_level: LogLevel = "INFO"


StepPlan = Union[ShellStep, NoStep]


@frozen_value
class FileToWrite:
    path: Path
    content: str


@frozen_value
class QueryPlan:
    """Write `files` (creating parent dirs), run `steps` in order until one fails, then remove `cleanup`.

    The exit code is the last step's (a failed compile ends the run, docs/protocol.md §8.1). `cleanup` holds files and
    directories to remove recursively, whatever the outcome; upstream left its temp files behind.
    """

    files: tuple[FileToWrite, ...]
    steps: tuple[ShellStep, ...]
    cleanup: tuple[Path, ...]


# --------------------------------------------------------------------------------------------
# Batch `*` heuristics (docs/protocol.md §5.1, §8.1) as ordered candidate rules
# --------------------------------------------------------------------------------------------


@frozen_value
class RunIfFile:
    """If `path` is a regular file in the work dir, run `command` (templates: `{runtime}`)."""

    path: str
    command: str
    batch_mode: bool = False  # docs/protocol.md §5.4: only the python exec heuristic sets it


@frozen_value
class RunWithSources:
    """If `sources` matches files (and `if_file` exists), run `command` with `{sources}` = the quoted matches."""

    sources: str
    command: str
    if_file: str | None = None


@frozen_value
class CompileEachThenLink:
    """If `if_file` exists: compile every source on its own, stopping at the first failure, then link.

    Objects sit next to their sources (`a/x.c` → `a/x.o`) so two `x.c` in different folders do not collide
    (docs/protocol.md §10.6 #47). Templates: `{runtime}`, `{source}`, `{object}`, `{objects}`.
    """

    if_file: str
    sources: str
    compile: str
    link: str


@frozen_value
class RunFirstExecutable:
    """Run the first executable regular file found in `dirs`, tried in order (rust's target folders)."""

    dirs: tuple[str, ...]


Candidate = Union[RunIfFile, RunWithSources, CompileEachThenLink, RunFirstExecutable]


@frozen_value
class Heuristic:
    """Try `candidates` in order; the first that applies gives the step, otherwise `otherwise`."""

    candidates: tuple[Candidate, ...] = ()
    otherwise: NoStep = NoStep(exit_code=0)


def missing(text: str, exit_code: int = 127) -> NoStep:
    """A heuristic that found nothing to run: an error for the user and the log (docs/protocol.md §5.1: 127)."""
    return NoStep(exit_code=exit_code, stderr_text=text + "\n", log_text=text, log_level="ERROR")


def warn_ok(text: str) -> NoStep:
    return NoStep(exit_code=0, stderr_text=text + "\n", log_text=text, log_level="WARNING")


def info_ok(text: str) -> NoStep:
    return NoStep(exit_code=0, log_text=text, log_level="INFO")


# --------------------------------------------------------------------------------------------
# The language record
# --------------------------------------------------------------------------------------------


@frozen_value
class LangSpec:
    """Everything that differs between languages (docs/protocol.md §8.1), as data; see table.py for the rows."""

    name: str
    log_prefix: str
    default_runtime_path: str | None
    # An executable that matches is taken before the default: java's first /usr/lib/jvm/java-*/bin/java, python's
    # /opt/backend.ai/bin/python (a plain path is a pattern that matches itself; docs/protocol.md §8.1).
    runtime_glob: str | None = None
    query: QueryMode
    interrupt: InterruptMode = "none"
    input_queue: bool = False  # docs/protocol.md §4.4: the runner keeps a user-input queue
    python_input_hook: bool = False  # docs/protocol.md §5.6: batch children get the input()-patching sitecustomize
    env_inherit: tuple[str, ...] = ()  # keys copied from the runner env, "" when unset (docs/protocol.md §1.4 step 2)
    env_defaults: Mapping[str, str] = attrs.field(factory=dict)  # forced values; `{home}` is the work dir
    path_promotions: tuple[PathPromotion, ...] = ()  # docs/protocol.md §1.4 step 7, applied in order (last ends first)
    clean: Heuristic = Heuristic()
    build: Heuristic
    exec: Heuristic
    init_commands: tuple[str, ...] = ()  # shell commands run once at language init (docs/protocol.md §8.1 "Language-init")


@attrs.frozen(kw_only=True)  # attrs.evolve needs the real decorator (mypy)
class LangContext:
    """What the planners need to know about this runner instance."""

    runtime_path: str | None  # already resolved: see langs.resolve_runtime
    work_dir: Path
    env: Mapping[str, str]  # the child env (childenv.build_child_env)
    fs: FsView = LOCAL_FS
    input_socket: Path = DEFAULT_INPUT_SOCKET
    helper_python: str = sys.executable  # runs the Java stdin helper; the runner's own interpreter
    python_site_dir: Path | None = BATCH_SITE_DIR  # folder with the batch sitecustomize.py; None turns it off
