"""The terminal's `%` command parser and the gitgraph builder: every bad command is a value, never SystemExit."""

from __future__ import annotations

import pytest

from kernel_runner.actors.terminal.commands import (
    BRANCH_LOG_ARGS,
    CommandError,
    NotACommand,
    Ping,
    Resize,
    ShowGraph,
    build_graph,
    commit_log_args,
    git_argv,
    parse_branch_map,
    parse_command,
    resized_text,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%ping", Ping()),
        ("  %ping\n", Ping()),
        ("%ping # a comment", Ping()),
        ("%resize 40 100", Resize(rows=40, cols=100)),
        ("%resize 1 65535", Resize(rows=1, cols=65535)),
        ("%show graph /tmp/repo", ShowGraph(path="/tmp/repo")),
        ("%show graph .", ShowGraph(path=".")),
        ("%show graph 'with space'", ShowGraph(path="with space")),
    ],
)
def test_valid_commands(text: str, expected: object) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize("text", ["ls -l", "", "   ", "ping", "echo %ping"])
def test_text_without_percent_is_not_a_command(text: str) -> None:
    assert parse_command(text) == NotACommand()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("%", "empty command"),
        ("%   # only a comment", "empty command"),
        ("%nope", "unknown command %nope"),
        ("%ping extra", "no arguments"),
        ("%resize", "usage: %resize ROWS COLS"),
        ("%resize 40", "usage: %resize ROWS COLS"),
        ("%resize 40 100 7", "usage: %resize ROWS COLS"),
        ("%resize x 100", "ROWS must be a whole number"),
        ("%resize 40 abc", "COLS must be a whole number"),
        ("%resize 0 100", "ROWS must be a whole number"),
        ("%resize -3 100", "ROWS must be a whole number"),
        ("%resize 40 65536", "COLS must be a whole number"),
        ("%resize 4_0 100", "ROWS must be a whole number"),  # int() would take it; a terminal size should not
        ("%resize ٤٠ 100", "ROWS must be a whole number"),  # non-ASCII digits
        ("%show", "usage: %show graph PATH"),
        ("%show graph", "usage: %show graph PATH"),
        ("%show graph a b", "usage: %show graph PATH"),
        ("%show tree .", "unsupported target 'tree'"),
        ("%show graph 'unbalanced", "cannot parse the command"),
    ],
)
def test_bad_commands_are_errors_not_exits(text: str, fragment: str) -> None:
    result = parse_command(text)
    assert isinstance(result, CommandError), result
    assert fragment in result.message


def test_resize_text_is_upstreams() -> None:
    assert resized_text(40, 100) == "OK; terminal resized to 40 lines and 100 columns"


def test_git_commands_never_page_or_colour() -> None:
    argv = git_argv(BRANCH_LOG_ARGS)
    assert argv[:2] == ["git", "--no-pager"]
    assert "color.ui=never" in argv
    log = commit_log_args(50)
    assert {"--all", "--topo-order", "--reverse", "--max-count=50"} <= set(log)


def test_branch_map_strips_refs_heads_and_skips_junk() -> None:
    text = "aaa\x00master\nbbb\x00refs/heads/feat\n\nccc\x00\nno-separator\n"
    assert parse_branch_map(text) == {"aaa": "master", "bbb": "feat"}


def test_graph_objects_have_the_spec_shape() -> None:
    branches = {"f1" * 20: "master", "f2" * 20: "feat", "f3" * 20: "master"}
    log = "\n".join(
        [
            "\x00".join(["f1" * 20, "f1f1f1f", "", "", "Ann", "first || with bars"]),
            "\x00".join(["f2" * 20, "f2f2f2f", "f1" * 20, "f1f1f1f", "Bob", "second"]),
            "\x00".join(["f3" * 20, "f3f3f3f", f"{'f1' * 20} {'f2' * 20}", "f1f1f1f f2f2f2f", "Ann", "merge"]),
        ]
    )
    graph = build_graph(branches, log)
    assert graph == [
        {
            "oid": "f1f1f1f",
            "parent_ids": [],
            "author": "Ann",
            "message": "first || with bars",
            "branch": "master",
            "parent_branches": [],
        },
        {
            "oid": "f2f2f2f",
            "parent_ids": ["f1f1f1f"],
            "author": "Bob",
            "message": "second",
            "branch": "feat",
            "parent_branches": ["master"],
        },
        {
            "oid": "f3f3f3f",
            "parent_ids": ["f1f1f1f", "f2f2f2f"],
            "author": "Ann",
            "message": "merge",
            "branch": "master",
            "parent_branches": ["master", "feat"],
        },
    ]


def test_graph_commit_off_every_branch_has_null_branch_and_subject_keeps_separators() -> None:
    log = "\x00".join(["e" * 40, "eeeeeee", "", "", "Eve", "tab\tand \x00 nul"])
    (commit,) = build_graph({}, log)
    assert commit["branch"] is None
    assert commit["message"] == "tab\tand \x00 nul"


def test_empty_history_gives_an_empty_graph() -> None:
    assert build_graph({}, "") == []
