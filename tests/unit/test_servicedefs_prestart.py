"""Each prestart action of docs/protocol.md §6.5 on a temporary folder, with real (short, bounded) commands."""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernel_runner.servicedefs.errors import ServiceStartError, TemplateError
from kernel_runner.servicedefs.prestart import CommandTimedOut, run_bounded, run_prestart
from kernel_runner.servicedefs.schema import CONVERTER, PrestartAction, ServiceDefinition
from tests.support.procs import assert_gone

VARIABLES: dict[str, Any] = {"ports": [18080], "runtime_path": sys.executable}


def actions(*raw: dict[str, Any]) -> tuple[PrestartAction, ...]:
    return CONVERTER.structure({"command": ["x"], "prestart_actions": list(raw)}, ServiceDefinition).prestart_actions


class LogRecorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, text: str) -> None:
        self.lines.append((level, text))


def run(tmp_path: Path, *raw: dict[str, Any], log: LogRecorder | None = None, timeout_s: float = 5.0,
        confined: bool = False) -> dict[str, Any]:
    return run_prestart(
        actions(*raw),
        env=dict(os.environ),
        work_dir=tmp_path,
        variables=VARIABLES,
        log=log or LogRecorder(),
        timeout_s=timeout_s,
        confined=confined,
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_file_interpolates_adds_newlines_and_chmods(tmp_path: Path) -> None:
    refs = run(
        tmp_path,
        {
            "action": "write_file",
            "args": {"filename": "conf-{ports[0]}.txt", "body": ["port={ports[0]}", "x"], "mode": "600"},
            "ref": "w",
        },
    )
    written = tmp_path / "conf-18080.txt"
    assert written.read_text() == "port=18080\nx\n"
    assert mode_of(written) == 0o600
    assert refs == {"w": None}


def test_write_file_append_really_appends(tmp_path: Path) -> None:
    # docs/protocol.md §10.4 item 33: upstream truncated even with append=true.
    (tmp_path / "log.txt").write_text("old\n")
    run(tmp_path, {"action": "write_file", "args": {"filename": "log.txt", "body": ["new"], "append": True}})
    assert (tmp_path / "log.txt").read_text() == "old\nnew\n"
    run(tmp_path, {"action": "write_file", "args": {"filename": "log.txt", "body": ["only"]}})
    assert (tmp_path / "log.txt").read_text() == "only\n"


def test_write_tempfile_returns_a_py_path_without_added_newlines(tmp_path: Path) -> None:
    refs = run(
        tmp_path, {"action": "write_tempfile", "args": {"body": ["a = {ports[0]}\n", "b = 2"], "mode": "640"}, "ref": "cfg"}
    )
    path = Path(refs["cfg"])
    try:
        assert path.is_absolute()
        assert path.suffix == ".py"
        assert path.read_text() == "a = 18080\nb = 2"
        assert mode_of(path) == 0o640
    finally:
        path.unlink()


def test_run_command_result_feeds_later_templates(tmp_path: Path) -> None:
    refs = run(
        tmp_path,
        {
            "action": "run_command",
            "args": {"command": [sys.executable, "-c", "import sys; print('out', {ports[0]}); print('err', file=sys.stderr)"]},
            "ref": "probe",
        },
        {"action": "write_file", "args": {"filename": "seen.txt", "body": ["{probe[out]}"]}},
    )
    assert refs["probe"] == {"out": "out 18080\n", "err": "err\n"}
    assert (tmp_path / "seen.txt").read_text() == "out 18080\n\n"


def test_run_command_runs_in_work_dir_and_ignores_exit_code_with_a_warning(tmp_path: Path) -> None:
    log = LogRecorder()
    refs = run(
        tmp_path,
        {
            "action": "run_command",
            "args": {"command": [sys.executable, "-c", "import os; print(os.getcwd()); raise SystemExit(3)"]},
            "ref": "r",
        },
        log=log,
    )
    assert refs["r"]["out"].strip() == str(tmp_path)
    assert log.lines == [("WARNING", f"prestart run_command {sys.executable} exited with code 3")]


def test_run_command_decodes_bad_utf8_leniently(tmp_path: Path) -> None:
    refs = run(
        tmp_path,
        {
            "action": "run_command",
            "args": {"command": [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'a\\xffb')"]},
            "ref": "r",
        },
    )
    assert refs["r"]["out"] == "a\ufffdb"


def test_run_command_missing_program_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError) as info:
        run(tmp_path, {"action": "run_command", "args": {"command": ["/nonexistent/tool"]}})
    assert info.value.reply_text == "prestart run_command: the executable file is not found: /nonexistent/tool"


def raised_within(call: Callable[[], object], seconds: float) -> BaseException | None:
    """What `call` raised, failing the test if it has not returned after `seconds` (its thread is left behind)."""
    outcome: list[BaseException | None] = []

    def body() -> None:
        try:
            call()
        except BaseException as exc:  # handed back to the test, which checks its type
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=body, name="raised_within", daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s"
    return outcome[0]


def test_run_command_is_bounded_and_kills_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The command and its grandchild sleep 600 s, the wait is 60 s: only a bounded run returns in it.
    script = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid));"
        "time.sleep(600)"
    )
    # 5 s leaves a loaded machine time to start Python and write the pid file before the bound hits.
    error = raised_within(lambda: run(tmp_path, {"action": "run_command",
                                                 "args": {"command": [sys.executable, "-c", script]}}, timeout_s=5.0),
                          60)
    assert isinstance(error, ServiceStartError)
    assert error.reply_text == f"prestart run_command timed out after 5 s: {sys.executable}"
    assert_gone([int(pidfile.read_text())], timeout=30)  # killed with its group, not left running for 600 s


def test_run_bounded_survives_a_grandchild_that_left_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "escaped.pid"
    script = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)']);"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(600)"
    )
    try:
        # The escaped process holds the pipes for 600 s, the wait is 60 s: only a run that stops waiting returns.
        error = raised_within(lambda: run_bounded([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path,
                                                  timeout_s=1.0), 60)
        assert isinstance(error, CommandTimedOut), error
    finally:
        if pidfile.exists():
            escaped = psutil.Process(int(pidfile.read_text()))
            escaped.kill()
            escaped.wait(timeout=5)


def test_mkdir_creates_parents_and_accepts_existing(tmp_path: Path) -> None:
    run(tmp_path, {"action": "mkdir", "args": {"path": "a/b/{ports[0]}"}})
    run(tmp_path, {"action": "mkdir", "args": {"path": "a/b/{ports[0]}"}})
    assert (tmp_path / "a" / "b" / "18080").is_dir()


def test_log_levels_and_verbatim_text(tmp_path: Path) -> None:
    log = LogRecorder()
    run(
        tmp_path,
        {"action": "log", "args": {"message": "port {ports[0]} {{x}}"}},
        {"action": "log", "args": {"message": "quiet", "debug": True}},
        log=log,
    )
    assert log.lines == [("INFO", "port 18080 {x}"), ("DEBUG", "quiet")]


def test_io_errors_name_the_failing_action(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ServiceStartError) as info:
        run(tmp_path, {"action": "log", "args": {"message": "ok"}}, {"action": "mkdir", "args": {"path": "file/sub"}})
    assert info.value.reply_text.startswith("prestart action #1 (mkdir) failed: ")


def test_template_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as info:
        run(tmp_path, {"action": "log", "args": {"message": "{ports[3]}"}})
    assert "IndexError" in info.value.reply_text


# ---- confined actions: a model's pre_start_actions came over the wire (docs/protocol.md §2.8) -------------------


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A work dir with a sibling folder outside it, a symlink out of it and a symlink within it."""
    (tmp_path / "work" / "inner").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "work" / "out-link").symlink_to(tmp_path / "outside")
    (tmp_path / "work" / "in-link").symlink_to(tmp_path / "work" / "inner")
    (tmp_path / "work" / "file-link").symlink_to(tmp_path / "outside" / "target.txt")
    return tmp_path / "work"


ESCAPES = [
    ("../outside/escape.txt", "leads outside the work dir"),
    ("inner/../../outside/escape.txt", "leads outside the work dir"),
    ("{ports[0]}/../../outside/escape.txt", "leads outside the work dir"),
    ("out-link/escape.txt", "leads outside the work dir"),
    ("file-link", "leads outside the work dir"),
    ("/tmp/kernel-runner-escape.txt", "is absolute"),
]


@pytest.mark.parametrize(("filename", "says"), ESCAPES)
def test_a_confined_write_file_stays_in_the_work_dir(work: Path, filename: str, says: str) -> None:
    with pytest.raises(ServiceStartError) as info:
        run(work, {"action": "write_file", "args": {"filename": filename, "body": ["x"]}}, confined=True)
    assert info.value.reply_text.startswith("prestart action #0 (write_file) failed: the path ")
    assert says in info.value.reply_text
    assert list((work.parent / "outside").iterdir()) == []
    assert not Path("/tmp/kernel-runner-escape.txt").exists()


@pytest.mark.parametrize(("path", "says"), [(f.replace("escape.txt", "made"), says) for f, says in ESCAPES])
def test_a_confined_mkdir_stays_in_the_work_dir(work: Path, path: str, says: str) -> None:
    with pytest.raises(ServiceStartError, match=says):
        run(work, {"action": "mkdir", "args": {"path": path}}, confined=True)
    assert list((work.parent / "outside").iterdir()) == []


def test_a_symlink_loop_is_refused_not_raised(work: Path) -> None:
    (work / "loop-a").symlink_to(work / "loop-b")
    (work / "loop-b").symlink_to(work / "loop-a")
    with pytest.raises(ServiceStartError, match="cannot be resolved"):
        run(work, {"action": "write_file", "args": {"filename": "loop-a/x", "body": ["x"]}}, confined=True)


def test_confined_paths_inside_the_work_dir_work_symlinks_included(work: Path) -> None:
    run(work,
        {"action": "mkdir", "args": {"path": "a/b"}},
        {"action": "write_file", "args": {"filename": "a/b/../c.txt", "body": ["one"]}},
        {"action": "write_file", "args": {"filename": "in-link/d.txt", "body": ["two"], "mode": "600"}},
        confined=True)
    assert (work / "a" / "c.txt").read_text() == "one\n"
    assert (work / "inner" / "d.txt").read_text() == "two\n" and mode_of(work / "inner" / "d.txt") == 0o600


def test_confined_modes_are_permission_bits_only(work: Path) -> None:
    with pytest.raises(ServiceStartError, match="mode 4755 sets more than permission bits"):
        run(work, {"action": "write_file", "args": {"filename": "s", "body": ["x"], "mode": "4755"}}, confined=True)
    assert not (work / "s").exists()


def test_confined_log_messages_are_quoted_briefly(work: Path) -> None:
    log = LogRecorder()
    run(work, {"action": "log", "args": {"message": "line\nforged " + "x" * 5000}}, log=log, confined=True)
    ((level, text),) = log.lines
    assert level == "INFO" and "\n" not in text and len(text) < 1100 and text.startswith("'line\\nforged ")


def test_image_actions_are_not_confined(work: Path) -> None:
    """Service definitions come from the image, which is trusted to write where it means to (docs/protocol.md §2.8)."""
    run(work, {"action": "write_file", "args": {"filename": "../outside/image.txt", "body": ["ok"]}})
    assert (work.parent / "outside" / "image.txt").read_text() == "ok\n"
