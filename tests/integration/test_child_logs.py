"""Each child's lines: per-child log files with rotation, and the in-memory ring buffers (docs/operations.md §3, §4)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import attrs
import pytest
from loguru import logger

from kernel_runner import RunnerConfig
from kernel_runner.client import AgentClient
from kernel_runner.observability.childlog import ChildLogBook, log_file_name
from kernel_runner.observability.events import Event, emit
from kernel_runner.observability.logs import json_line_sink
from kernel_runner.runtime.root import RunnerStartError, start
from tests.conftest import CHILDREN
from tests.integration.test_services import write_defs
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

CHATTY = {"command": [sys.executable, str(CHILDREN / "listener.py"), "{ports[0]}"]}


def text_with(path: Path, *needles: str) -> str | None:
    text = path.read_text() if path.exists() else ""
    return text if all(needle in text for needle in needles) else None


def test_each_child_gets_its_own_file_from_its_first_line(runner_config: RunnerConfig, tmp_path: Path) -> None:
    folder = tmp_path / "child-logs"
    write_defs(runner_config.service_defs_dir, {"web": CHATTY})
    handle = start(attrs.evolve(runner_config, child_log_dir=folder))
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            port = free_port()
            reply = agent.start_service({"name": "web", "port": port, "ports": [port], "protocol": "tcp",
                                         "options": {}}, timeout=20)
            assert reply == {"status": "started"}
            web = folder / log_file_name("service:web")
            assert web.name == "service_web.log"
            # Its output line and its RUNNING line come from two threads, in either order.
            text = wait_until(lambda: text_with(web, "stdout: listener", "entered RUNNING state"), timeout=10,
                              what="the service's output and its RUNNING line in its file")
            lines = text.splitlines()
            assert "starting (generation 1)" in lines[0]  # the file begins with the child's story
            assert "[router]" not in text and "listening: PULL" not in text  # only this child's lines
            assert "listening: PULL" in (folder / "router.log").read_text()
    finally:
        handle.stop(timeout=5)


def test_a_child_file_is_rotated_and_old_ones_pruned(runner_config: RunnerConfig, tmp_path: Path) -> None:
    folder = tmp_path / "child-logs"
    handle = start(attrs.evolve(runner_config, child_log_dir=folder, child_log_rotation="2 KB",
                                child_log_retention=2))
    try:
        log = logger.bind(child="runner")
        for number in range(200):
            log.info("line {} {}", number, "x" * 40)
        rotated = sorted(path.name for path in folder.glob("runner.*.log"))
        assert 1 <= len(rotated) <= 2, rotated  # rotated, and only `retention` old files are kept
        assert (folder / "runner.log").stat().st_size <= 2048
        assert "line 199" in (folder / "runner.log").read_text()
    finally:
        handle.stop(timeout=5)


FILE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) *\S")


def test_a_child_file_has_one_line_per_record_and_no_blank_ones(runner_config: RunnerConfig, tmp_path: Path) -> None:
    folder = tmp_path / "child-logs"
    handle = start(attrs.evolve(runner_config, child_log_dir=folder))
    try:
        log = logger.bind(child="runner")
        for number in range(3):
            log.info("record {}", number)
        log.opt(exception=ValueError("boom")).error("record with an exception")
        log.warning("record after it")
        lines = (folder / "runner.log").read_text().splitlines()
    finally:
        handle.stop(timeout=5)
    assert "" not in lines, lines
    ours = [line for line in lines if " record" in line]
    assert [line.split(" ", 3)[3].strip() for line in ours] == [
        "record 0", "record 1", "record 2", "record with an exception", "record after it"]
    assert all(FILE_LINE.match(line) for line in ours), ours
    failed = lines.index(ours[3])
    assert lines[failed + 1] == "ValueError: boom"  # the exception right below its record
    assert lines[failed + 2] == ours[4]


def test_a_rotation_loguru_cannot_read_fails_the_start_with_one_line(runner_config: RunnerConfig,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(RunnerStartError, match="per-child log files"):
        start(attrs.evolve(runner_config, child_log_dir=tmp_path / "logs", child_log_rotation="whenever"))


def test_the_ring_buffer_keeps_the_last_lines_of_each_child_and_feeds_followers() -> None:
    book = ChildLogBook(lines_per_child=3, max_children=2).install(level="DEBUG")
    try:
        for number in range(5):
            logger.bind(child="a").info("a{}", number)
        followed: list[str] = []
        backlog, unfollow = book.follow("a", followed.append, lines=2)
        assert [line.rsplit(" ", 1)[-1] for line in backlog] == ["a3", "a4"]
        logger.bind(child="a").warning("a5")
        unfollow()
        logger.bind(child="a").info("a6")
        assert len(followed) == 1 and followed[0].endswith("WARNING a5")
        assert [line.rsplit(" ", 1)[-1] for line in book.tail("a", 10)] == ["a4", "a5", "a6"]
        logger.bind(child="b").info("b")
        logger.bind(child="c").info("c")  # a third child: the oldest buffer nobody follows goes
        assert book.children() == ["b", "c"] and book.tail("a", 10) == []
    finally:
        book.uninstall()


def test_a_json_line_is_flat_and_carries_the_event_fields() -> None:
    stream = io.StringIO()
    sink_id = logger.add(json_line_sink(stream), format="{message}")
    try:
        emit(logger.bind(child="service:web"), "WARNING", Event.EXITED, "exited: {}", "killed", pid=42,
             exit_code=137, signal=9, reason="killed", delay_s=None)
        logger.bind(child="runner").info("plain line")
    finally:
        logger.remove(sink_id)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first.pop("ts")
    assert first == {"level": "WARNING", "child": "service:web", "event": "exited", "pid": 42, "exit_code": 137,
                     "signal": "SIGKILL", "reason": "killed", "message": "exited: killed"}
    assert second.keys() == {"ts", "level", "child", "message"}


def test_a_services_output_line_in_json_names_its_stream_and_port(runner_config: RunnerConfig) -> None:
    write_defs(runner_config.service_defs_dir, {"web": CHATTY})
    stream = io.StringIO()
    sink_id = logger.add(json_line_sink(stream), format="{message}")
    handle = start(runner_config)
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            port = free_port()
            reply = agent.start_service({"name": "web", "port": port, "ports": [port], "protocol": "tcp",
                                         "options": {}}, timeout=20)
            assert reply == {"status": "started"}

            def output_line() -> dict[str, object] | None:
                records = (json.loads(line) for line in stream.getvalue().splitlines())
                return next((record for record in records if record["child"] == "service:web"
                             and str(record["message"]).startswith("stdout: listener")), None)

            line = wait_until(output_line, timeout=10, what="the service's output line")
    finally:
        handle.stop(timeout=5)
        logger.remove(sink_id)
    assert (line["stream"], line["port"]) == ("stdout", port)
    assert isinstance(line["pid"], int) and "event" not in line
