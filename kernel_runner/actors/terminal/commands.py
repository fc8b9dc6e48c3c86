"""Pure parts of the git runner's terminal (docs/protocol.md §8.3): `%` command parsing and the gitgraph built from `git log`.

Nothing here raises into the runner: every bad command is a `CommandError` value (upstream's argparse raised
SystemExit and killed the runner, docs/protocol.md §10.6 #45).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Union

import attrs

from kernel_runner.excerpts import EXCERPT_CHARS, excerpt

GITGRAPH_MIME = "application/vnd.sorna.gitgraph"

# Exit codes of a `code` op on the terminal (each op ends with exactly one Finished).
EXIT_OK = 0
EXIT_FAILED = 1  # docs/protocol.md §8.3: "command that raises an exception" → 1 (also: %show graph on a missing folder)
EXIT_USAGE = 2  # a `%` command that does not parse (argparse's own usage code; upstream died instead)
EXIT_TIMEOUT = 124  # git did not finish within the bound (timeout(1)'s convention)
EXIT_NOT_A_COMMAND = 127  # docs/protocol.md §8.3: text without `%` → "Invalid command.", 127

INVALID_COMMAND_TEXT = "Invalid command."
PONG_TEXT = "pong!"
USAGE = "usage: %ping | %resize ROWS COLS | %show graph PATH"

# struct winsize holds unsigned shorts; 0 means "unknown" to programs, so a real size starts at 1.
MAX_WINSIZE = 65535
# A `%` command is a few words and a path (PATH_MAX is 4096); shlex's time grows with the square of a word's length,
# so a longer text is refused before it is parsed (2 MB would hold the terminal for minutes).
MAX_COMMAND_CHARS = 8192
_NUMBER = re.compile(r"[0-9]{1,5}", re.ASCII)  # a size fits in 5 digits; int() refuses over 4300 of them (it raises)


@attrs.frozen(kw_only=True)
class Ping:
    pass


@attrs.frozen(kw_only=True)
class Resize:
    rows: int
    cols: int


@attrs.frozen(kw_only=True)
class ShowGraph:
    path: str


@attrs.frozen(kw_only=True)
class NotACommand:
    """The text does not start with `%`: upstream answers "Invalid command." with 127 (docs/protocol.md §8.3)."""


@attrs.frozen(kw_only=True)
class CommandError:
    """A `%` text that does not parse; `message` is one line for stderr."""

    message: str


Command = Union[Ping, Resize, ShowGraph]
ParseResult = Union[Ping, Resize, ShowGraph, NotACommand, CommandError]


def resized_text(rows: int, cols: int) -> str:
    """docs/protocol.md §8.3: the stdout line `%resize` answers with."""
    return f"OK; terminal resized to {rows} lines and {cols} columns"


def parse_command(text: str) -> ParseResult:
    """Parse one `code` text: `%` then shell-style words with `#` comments (docs/protocol.md §8.3), never raising."""
    stripped = text.strip()
    if not stripped.startswith("%"):
        return NotACommand()
    if len(stripped) > MAX_COMMAND_CHARS:
        return CommandError(message=f"the command is {len(stripped)} characters long; a % command takes at most "
                                    f"{MAX_COMMAND_CHARS}: {excerpt(stripped)}; {USAGE}")
    try:
        words = shlex.split(stripped[1:], comments=True)
    except ValueError as exc:  # unbalanced quotes and the like
        return CommandError(message=f"cannot parse the command: {exc}; {USAGE}")
    if not words:
        return CommandError(message=f"empty command; {USAGE}")
    name, args = words[0], words[1:]
    match name:
        case "ping":
            return _parse_ping(args)
        case "resize":
            return _parse_resize(args)
        case "show":
            return _parse_show(args)
        case _:
            shown = name if len(name) <= EXCERPT_CHARS else f"{name[:EXCERPT_CHARS]}…"
            return CommandError(message=f"unknown command %{shown}; {USAGE}")


def _parse_ping(args: Sequence[str]) -> ParseResult:
    if args:
        return CommandError(message=f"%ping takes no arguments; {USAGE}")
    return Ping()


def _parse_resize(args: Sequence[str]) -> ParseResult:
    if len(args) != 2:
        return CommandError(message="usage: %resize ROWS COLS")
    sizes: list[int] = []
    for label, word in zip(("ROWS", "COLS"), args, strict=True):
        value = int(word) if _NUMBER.fullmatch(word) else 0
        if not 1 <= value <= MAX_WINSIZE:
            return CommandError(message=f"%resize: {label} must be a whole number from 1 to {MAX_WINSIZE}, got {excerpt(word)}")
        sizes.append(value)
    return Resize(rows=sizes[0], cols=sizes[1])


def _parse_show(args: Sequence[str]) -> ParseResult:
    if not args:
        return CommandError(message="usage: %show graph PATH")
    if args[0] != "graph":
        return CommandError(message=f"%show: unsupported target {excerpt(args[0])}; usage: %show graph PATH")
    if len(args) != 2:
        return CommandError(message="usage: %show graph PATH")
    return ShowGraph(path=args[1])


# ---- %show graph ------------------------------------------------------------------------------------------

# Fields are split by NUL (git strings cannot hold one) and records by newline (%s and %cn are one line each),
# so a subject containing `||` no longer corrupts its commit (upstream's separator, docs/protocol.md §8.3).
BRANCH_LOG_ARGS: tuple[str, ...] = ("log", "--branches", "--source", "--pretty=format:%H%x00%S")


def commit_log_args(max_commits: int) -> tuple[str, ...]:
    """docs/protocol.md §8.3 step 4 (`--all --topo-order --reverse`), plus full hashes for the branch lookups and a bound."""
    return (
        "log",
        "--all",
        "--topo-order",
        "--reverse",
        f"--max-count={max_commits}",
        "--pretty=format:%H%x00%h%x00%P%x00%p%x00%cn%x00%s",
    )


def git_argv(args: Sequence[str]) -> list[str]:
    """git without a pager, colours or signature checks: output is parsed, never shown to a terminal."""
    return ["git", "--no-pager", "-c", "color.ui=never", "-c", "log.showSignature=false", *args]


def parse_branch_map(text: str) -> dict[str, str]:
    """Full commit id → the branch `git log --branches --source` reached it by (docs/protocol.md §8.3 steps 2-3)."""
    branches: dict[str, str] = {}
    for line in text.splitlines():
        full, sep, source = line.partition("\x00")
        if not sep or not full or not source:
            continue
        branches[full] = source.removeprefix("refs/heads/")
    return branches


def build_graph(branches: Mapping[str, str], commit_log: str) -> list[dict[str, Any]]:
    """One gitgraph object per commit, oldest first (docs/protocol.md §8.3 step 4).

    A root commit gets empty `parent_ids`/`parent_branches` (upstream gave `[""]` and `[null]`).
    """
    commits: list[dict[str, Any]] = []
    for line in commit_log.splitlines():
        fields = line.split("\x00", 5)
        if len(fields) != 6:
            continue
        full, short, parents_full, parents_short, committer, subject = fields
        commits.append(
            {
                "oid": short,
                "parent_ids": parents_short.split(),
                "author": committer,
                "message": subject,
                "branch": branches.get(full),
                "parent_branches": [branches.get(parent) for parent in parents_full.split()],
            }
        )
    return commits


__all__ = [
    "BRANCH_LOG_ARGS",
    "EXIT_FAILED",
    "EXIT_NOT_A_COMMAND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "GITGRAPH_MIME",
    "INVALID_COMMAND_TEXT",
    "PONG_TEXT",
    "USAGE",
    "Command",
    "CommandError",
    "NotACommand",
    "ParseResult",
    "Ping",
    "Resize",
    "ShowGraph",
    "build_graph",
    "commit_log_args",
    "git_argv",
    "parse_branch_map",
    "parse_command",
    "resized_text",
]
