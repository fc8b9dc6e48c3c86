"""The control socket's pure parts: framing, where the socket lives, durations and the `ctl status` table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernel_runner.cli.ctl import build_parser, render, status_table
from kernel_runner.control.protocol import (
    MAX_REQUEST_BYTES,
    SOCKET_ENV,
    ProtocolError,
    configured_socket_path,
    decode_reply,
    decode_request,
    default_socket_path,
    encode,
    format_duration,
    own_socket_path,
    runner_sockets,
)


def test_the_default_path_is_under_the_runtime_dir_or_a_per_user_tmp_folder() -> None:
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path("/run/user/1000/kernel-runner/control.sock")
    assert default_socket_path({}) == Path(f"/tmp/kernel-runner-{os.getuid()}/control.sock")
    assert default_socket_path({"XDG_RUNTIME_DIR": ""}) == default_socket_path({})


def test_the_environment_overrides_the_default() -> None:
    assert configured_socket_path({SOCKET_ENV: "/srv/ctl.sock", "XDG_RUNTIME_DIR": "/run/x"}) == Path("/srv/ctl.sock")
    assert configured_socket_path({"XDG_RUNTIME_DIR": "/run/x"}) == Path("/run/x/kernel-runner/control.sock")


def test_the_sockets_runners_make_in_the_default_folder(tmp_path: Path) -> None:
    default = tmp_path / "control.sock"
    assert own_socket_path(default, 42) == tmp_path / "control-42.sock"
    assert own_socket_path(default, 42, "0a1b2c") == tmp_path / "control-42-0a1b2c.sock"
    assert runner_sockets(tmp_path / "missing") == []
    for name in ("control-9.sock", "control-42-0a1b2c.sock", ".ctl-7", "control.sock", "other.sock", "control-x.sock"):
        (tmp_path / name).touch()  # the names count here; `ctl` asks each socket before it counts a runner
    assert [path.name for path in runner_sockets(tmp_path)] == ["control.sock", "control-42-0a1b2c.sock",
                                                                "control-9.sock"]


def test_one_json_object_per_line() -> None:
    line = encode({"cmd": "tail", "args": {"child": "service:wéb", "path": Path("/x")}})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == ("tail", {"child": "service:wéb", "path": "/x"})
    assert decode_request(b'{"cmd": "status"}') == ("status", {})
    assert decode_reply(b'{"ok": false, "error": "no"}\n') == {"ok": False, "error": "no"}
    assert MAX_REQUEST_BYTES == 64 * 1024


@pytest.mark.parametrize(("line", "why"), [
    (b"{", "not JSON"),
    (b"\xff", "not JSON"),
    (b"3", "must be a JSON object, got int"),
    (b'{"cmd": 3}', 'no "cmd" string'),
    (b'{"cmd": "x", "args": "y"}', '"args" must be a JSON object, got str'),
])
def test_bad_requests_say_what_is_wrong(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_request(line)


def test_a_reply_must_say_ok() -> None:
    with pytest.raises(ProtocolError, match='"ok"'):
        decode_reply(b'{"error": "x"}')


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0:00:00"), (83.9, "0:01:23"), (3600, "1:00:00"), (86399, "23:59:59"), (86400 + 7384, "1d 2:03:04"),
    (12 * 86400, "12d 0:00:00"),
])
def test_durations_read_like_supervisorctl(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def row(child_id: str, state: str = "RUNNING", **fields: object) -> dict[str, object]:
    base: dict[str, object] = {"id": child_id, "state": state, "pid": None, "generation": 1, "restarts": 0,
                               "last_exit": None, "uptime_s": 83.0, "since": "2026-11-25T12:00:01+00:00",
                               "extra": {}, "children": []}
    base.update(fields)
    return base


def test_the_status_table_nests_bound_children_and_fills_gaps() -> None:
    reply = {"ok": True, "runner": {"lang": "app", "pid": 42, "version": "0.1.0", "ready": False,
                                    "not_ready": ["lang is STARTING"], "ports": {"in": 2000, "out": 2001}},
             "children": [row("router"),
                          row("service:m", pid=7, generation=3, restarts=2, last_exit="process exited with code 1",
                              uptime_s=90061.0, children=[row("health:m", extra={"health": "healthy"})]),
                          row("service:x", state="FATAL", uptime_s=None, since=None),
                          row("service:web", health="unready", extra={
                              "health": "unready", "port": 8080,
                              "last_probe": {"probe": "readiness", "ok": False, "status_code": 503}})]}
    lines = status_table(reply).splitlines()
    assert lines[0] == "kernel-runner 0.1.0  app  pid 42  NOT READY (lang is STARTING)  agent ports 2000/2001"
    assert lines[1].split() == ["CHILD", "STATE", "HEALTH", "PID", "UPTIME", "GEN", "RESTARTS", "SINCE", "LAST", "EXIT",
                                "/", "DETAILS"]
    assert lines[2].split() == ["router", "RUNNING", "-", "-", "0:01:23", "1", "0", "2026-11-25", "12:00:01", "-"]
    assert lines[3].split()[:9] == ["service:m", "RUNNING", "-", "7", "1d", "1:01:01", "3", "2", "2026-11-25"]
    assert lines[3].endswith("process exited with code 1")
    # A child's health is a column (from an older runner's reply: from its extra), not a detail.
    assert lines[4].startswith("  health:m ") and lines[4].split()[2] == "healthy" and "health=" not in lines[4]
    assert lines[5].split() == ["service:x", "FATAL", "-", "-", "-", "1", "0", "-", "-"]
    # Nested figures (a probe's last answer) are left to --json.
    assert lines[6].split()[2] == "unready" and lines[6].endswith("port=8080") and "last_probe" not in lines[6]
    state_at = lines[1].index("STATE")  # columns line up, the nested child's indent included
    assert all(line[state_at:].startswith(("RUNNING", "FATAL")) for line in lines[2:])
    health_at = lines[1].index("HEALTH")
    assert [line[health_at:].split()[0] for line in lines[2:]] == ["-", "-", "healthy", "-", "unready"]


def test_outcome_lines() -> None:
    assert render("restart", {"ok": True, "child": "lang", "action": "restarted", "generation": 2, "pid": None}) == \
        "lang: restarted (generation 2)"
    assert render("start", {"ok": True, "child": "service:w", "action": "already-started", "state": "RUNNING"}) == \
        "service:w: already started (RUNNING)"
    assert render("ready", {"ok": True, "ready": False, "not_ready": ["a", "b"]}) == "not ready: a; b"


def test_options_go_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--socket", "/s", "--timeout", "3", "--json", "tail", "-f", "-n", "5", "lang"])
    after = parser.parse_args(["tail", "lang", "-n", "5", "-f", "--json", "--timeout", "3", "--socket", "/s"])
    for args in (before, after):
        assert (args.socket, args.timeout, args.json, args.child, args.lines, args.follow) == (
            Path("/s"), 3.0, True, "lang", 5, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--timeout", "0", "status"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--sock", "/s", "status"])  # no abbreviations
