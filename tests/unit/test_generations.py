"""The agent-generation table and how the runner picks a row (docs/protocol.md §12)."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from kernel_runner.generations import (
    DEFAULT_ROW,
    GENERATIONS,
    ROWS,
    Evidence,
    GenerationChoice,
    GenerationTracker,
    ModelReply,
    check_setting,
    choose,
    model_payload_floor,
    mount_evidence,
    parse_release,
    row_for,
)


def test_rows_are_in_release_order_never_overlap_and_only_the_first_two_read_the_reply_as_a_verdict() -> None:
    firsts = [row.first for row in GENERATIONS]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)
    spans = sorted(span for row in GENERATIONS for span in row.ranges)
    assert all(earlier[1] < later[0] for earlier, later in itertools.pairwise(spans))
    assert [row.name for row in GENERATIONS if row.model_reply is ModelReply.VERDICT] == ["23.03", "23.03.11"]
    assert DEFAULT_ROW.model_reply is ModelReply.SPAWNED and DEFAULT_ROW.service_wait_s == 10


@pytest.mark.parametrize(("release", "row"), [
    ("23.03", "23.03"), ("23.03.10", "23.03"), ("23.03.11", "23.03.11"), ("23.09.0", "23.03.11"),
    ("23.09.1", "23.09.1"), ("24.09.5", "23.09.1"), ("24.12", "24.12"), ("25.11.2", "24.12"), ("26.4.3", "25.12"),
    ("26.4.9", "26.4.4"), ("26.4.10", "26.4.10"), ("26.4.12", "26.4.10"), ("26.7.0", "26.7"), ("26.8", "26.8"),
    ("26.8.1", "26.8"), ("26.8.2", "26.8.2"), ("27.1.0", "26.8.2"),
])
def test_any_release_maps_to_the_row_whose_range_holds_it(release: str, row: str) -> None:
    assert row_for(release).name == row


@pytest.mark.parametrize("bad", ["", "latest", "23", "22.09.1", "23.9.1.4", "v24.12", "23.01"])
def test_a_bad_setting_is_refused_with_what_is_accepted(bad: str) -> None:
    with pytest.raises(ValueError, match="use `auto`, a row"):
        check_setting(bad)
    assert check_setting(" AUTO ") == "auto"
    assert parse_release("26.7") == (26, 7, 0)


def test_the_service_reply_comes_before_each_agent_gives_up() -> None:
    for row in GENERATIONS:
        assert 0 < row.service_reply_within_s < row.service_wait_s
    # Only the 26.4 maintenance line from 26.4.10 and the releases after 26.8.1 wait 35 s; 26.7 and 26.8 wait 10 s.
    assert [row.name for row in GENERATIONS if row.service_reply_within_s == 30.0] == ["26.4.10", "26.8.2"]


def test_mount_evidence_names_each_path_the_agent_mounted(tmp_path: Path) -> None:
    kernel, config = tmp_path / "kernel", tmp_path / "config"
    assert mount_evidence(kernel_dir=kernel, config_dir=config) == ()
    (kernel).mkdir()
    (kernel / "dropbearmulti").touch()
    found = mount_evidence(kernel_dir=kernel, config_dir=config)
    assert [e.row for e in found] == ["23.09.1"] and "dropbearmulti" in found[0].why
    (kernel / "ttyd").touch()
    (config / "ssh").mkdir(parents=True)
    (config / "ssh" / "dropbear_rsa_host_key").touch()
    rows = [e.row for e in mount_evidence(kernel_dir=kernel, config_dir=config)]
    assert rows == ["23.09.1", "25.12", "25.12"]


@pytest.mark.parametrize(("payload", "row"), [
    ({"name": "m", "service": {"start_command": ["x"], "port": 1}}, None),
    ({"name": "m", "service": {"start_command": ["x"], "port": 1, "shell": "/bin/bash"}}, "23.09.1"),
    ({"name": "m", "metadata": {}, "service": None}, "23.09.1"),
    ({"name": "m", "service": {"start_command": ["x"], "port": 1, "health_check": {"path": "/", "interval": 1}}},
     "24.12"),
    ({"name": "m", "service": {"start_command": ["x"], "port": 1, "health_check": {"initial_delay": 60}}}, "25.12"),
    ({"name": "m", "service": {"start_command": ["x"], "port": 1, "health_check": {"enable": False}}}, "26.4.4"),
    ({"name": "m", "service": {"start_command": "serve", "port": 1, "shell": None}}, "26.8"),
    ({"name": "m", "service": {"start_command": "serve", "port": 1, "shell": ""}}, "26.8"),
    ({"name": "m", "service": {"start_command": "serve", "port": 1}}, "23.09.1"),
    ({"name": "m", "service": {"start_command": "serve", "port": 1, "health_check": {"enable": True}}}, "26.8"),
    ({"name": "m", "service": "not an object"}, None),
])
def test_a_payload_shape_proves_a_floor(payload: dict[str, object], row: str | None) -> None:
    found = model_payload_floor(payload)
    assert (found.row if found is not None else None) == row


def test_a_pinned_setting_wins_over_evidence_and_evidence_picks_the_newest_floor() -> None:
    evidence = (Evidence(row="25.12", why="ttyd"), Evidence(row="23.09.1", why="dropbearmulti"))
    pinned = choose("23.03.11", evidence)
    assert (pinned.row.name, pinned.pinned) == ("23.03.11", True)
    detected = choose("auto", evidence)
    assert (detected.row.name, detected.pinned, detected.reason) == ("25.12", False, "ttyd")
    default = choose("auto", ())
    assert default.row is DEFAULT_ROW and "KERNEL_RUNNER_AGENT_GENERATION" in default.reason


def test_the_tracker_only_raises_an_unpinned_floor_and_tells_each_change_once() -> None:
    changes: list[GenerationChoice] = []
    tracker = GenerationTracker(choose("auto", ()), on_change=changes.append)
    assert tracker.observe(None).row is DEFAULT_ROW
    assert tracker.observe(Evidence(row="23.03", why="older")).row is DEFAULT_ROW  # never lowered
    threads = [threading.Thread(target=tracker.observe, args=(Evidence(row="24.12", why="shell"),)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert tracker.choice.row is ROWS["24.12"] and [c.row.name for c in changes] == ["24.12"]
    pinned = GenerationTracker(choose("23.03", ()), on_change=changes.append)
    assert pinned.observe(Evidence(row="26.8", why="string")).row.name == "23.03" and len(changes) == 1


def test_status_shows_the_row_its_contract_and_why() -> None:
    shown = choose("26.8", ()).as_status()
    assert shown == {"row": "26.8", "releases": "26.8.0 – 26.8.1", "contract": "spawned", "pinned": True,
                     "reason": "pinned by the setting '26.8'"}


def test_the_protocol_docs_table_says_what_the_code_table_does() -> None:
    """docs/protocol.md §12.2 is the account of GENERATIONS: one row each, with its releases and both waits."""
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    section = text[text.index("### 12.2"):text.index("### 12.3")]
    rows = {cells[0]: cells for line in section.splitlines() if line.startswith("| ") and
            (cells := [cell.strip().strip("*") for cell in line.strip("|").split("|")])[0] in ROWS}
    assert list(rows) == [row.name for row in GENERATIONS]
    for row in GENERATIONS:
        _name, releases, meaning, agent_wait, runner_by, _status = rows[row.name]
        assert releases == row.releases
        assert (agent_wait, runner_by) == (f"{row.service_wait_s:g} s", f"{row.service_reply_within_s:g} s")
        assert ("verdict" in meaning) == (row.model_reply is ModelReply.VERDICT)
