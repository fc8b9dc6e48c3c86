"""CommandRunner: the terminal's `code` ops, its `%` commands, one at a time in arrival order (docs/protocol.md §8.3).

They do not depend on the shell's phase: they run in every phase until the terminal ends, so `%ping` and `%resize`
work while the shell restarts (a size set then applies to the next shell) and `%show graph .` falls back to the work
dir when no shell runs. The queue, the current op and its git job are the runner's own; the terminal hands it the
ops and their GitGraphDone, lends it the pty size (`resize_pty`) and the shell's folder (`shell_cwd`), and at its end
(`close`) has every op still queued or running answered with its one RunDone (127).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka

from kernel_runner.actors.terminal.commands import (
    EXIT_FAILED,
    EXIT_NOT_A_COMMAND,
    EXIT_OK,
    EXIT_USAGE,
    GITGRAPH_MIME,
    INVALID_COMMAND_TEXT,
    PONG_TEXT,
    CommandError,
    NotACommand,
    Ping,
    Resize,
    ShowGraph,
    parse_command,
    resized_text,
)
from kernel_runner.actors.terminal.io import EXIT_UNAVAILABLE, GitGraphJob
from kernel_runner.context import RunnerContext
from kernel_runner.excerpts import excerpt
from kernel_runner.ids import LANG_CHILD, ChildId
from kernel_runner.messages import GitGraphDone, Media, Output, RunDone, RunTask, StreamName
from kernel_runner.notices import notice_bytes
from kernel_runner.observability.debug_lines import debug

if TYPE_CHECKING:
    from loguru import Logger


class CommandRunner:
    """The `%` commands of one terminal incarnation: most answer at once, `%show graph` in a GitGraphJob thread."""

    def __init__(
        self,
        *,
        runner: RunnerContext,
        owner: pykka.ActorRef[Any],
        env: Mapping[str, str],
        log: Logger,
        tell_child: Callable[[ChildId, object], None],
        resize_pty: Callable[[int, int], None],
        shell_cwd: Callable[[], Path],
        git_timeout_s: float,
        max_graph_commits: int,
    ) -> None:
        self._runner = runner
        self._owner = owner
        self._env = env
        self.log = log
        self.tell_child = tell_child
        self._resize_pty = resize_pty
        self._shell_cwd = shell_cwd
        self._git_timeout_s = git_timeout_s
        self._max_graph_commits = max_graph_commits
        self._queue: collections.deque[RunTask] = collections.deque()
        self._current: RunTask | None = None
        self._graph_job: GitGraphJob | None = None

    def push(self, task: RunTask) -> None:
        self._queue.append(task)
        self._run_next()

    def _run_next(self) -> None:
        """One op at a time, in arrival order (Finished carries no run id); most finish right here."""
        while self._current is None and self._queue:
            task = self._queue.popleft()
            exit_code = self._execute(task)
            if exit_code is None:
                self._current = task  # runs in a helper thread; GitGraphDone finishes it
            else:
                self._send_finished(task, exit_code)

    def _execute(self, task: RunTask) -> int | None:
        if task.kind != "code":
            self._reply("stderr", f"kernel-runner: the terminal takes only `code` (% commands), not {task.kind}\n")
            return EXIT_UNAVAILABLE
        try:
            parsed = parse_command(task.text)  # inside: a parser bug must answer this op, not crash the terminal
            match parsed:
                case NotACommand():
                    self._reply("stderr", INVALID_COMMAND_TEXT)
                    return EXIT_NOT_A_COMMAND
                case CommandError():
                    self._reply("stderr", f"{parsed.message}\n")
                    return EXIT_USAGE
                case Ping():
                    self._reply("stdout", PONG_TEXT)
                    return EXIT_OK
                case Resize():
                    return self._resize(parsed)
                case ShowGraph():
                    return self._start_graph(task, parsed)
        except Exception as exc:  # noqa: BLE001 - docs/protocol.md §8.3: a failing command answers on stderr with 1
            self.log.opt(exception=exc).error("code op {} failed: {!r}", task.run_id, exc)
            self._reply("stderr", f"kernel-runner: the command failed: {excerpt(repr(exc))}\n")
            return EXIT_FAILED
        return EXIT_FAILED  # unreachable: parse_command returns one of the cases above

    def _resize(self, command: Resize) -> int:
        self._resize_pty(command.rows, command.cols)
        self._reply("stdout", resized_text(command.rows, command.cols))
        return EXIT_OK

    def _start_graph(self, task: RunTask, command: ShowGraph) -> None:
        path = self._resolve_path(command.path)
        self.log.info("%show graph {} (run {})", path, task.run_id)
        job = GitGraphJob(
            run_id=task.run_id,
            path=path,
            env=self._env,
            owner=self._owner,
            timeout_s=self._git_timeout_s,
            max_commits=self._max_graph_commits,
        )
        self._graph_job = job
        job.start()

    def _resolve_path(self, raw: str) -> Path:
        """`.` and other relative paths are taken from the shell's current folder (docs/protocol.md §8.3: `.` is the shell's)."""
        path = Path(os.path.expanduser(raw))
        if not path.is_absolute():
            path = self._shell_cwd() / path
        return Path(os.path.normpath(path))

    def git_graph_done(self, message: GitGraphDone) -> None:
        task = self._current
        if task is None or task.run_id != message.run_id:
            debug(self.log, "stale %show graph result for run {}", message.run_id)
            return
        self._graph_job = None
        self._current = None
        if message.stderr:
            self._runner.router.tell(Output(stream="stderr", data=message.stderr))
        if message.commits is not None:
            # docs/protocol.md §8.3: `data` is the list of commit objects itself; wire.encode serialises it as JSON unchanged.
            commits = [dict(commit) for commit in message.commits]
            self._runner.router.tell(Media(mime=GITGRAPH_MIME, data=commits))  # type: ignore[arg-type]
        self._send_finished(task, message.exit_code)
        self._run_next()

    def _reply(self, stream: StreamName, text: str) -> None:
        """One bounded record (docs/protocol.md §2.5), whatever the text quotes of the user's command."""
        self._runner.router.tell(Output(stream=stream, data=notice_bytes(text)))

    def _send_finished(self, task: RunTask, exit_code: int, note: str | None = None) -> None:
        """The language runner sends the op's one Finished (upstream sent two, docs/protocol.md §10.1 #6) once it hears this."""
        self.tell_child(LANG_CHILD, RunDone(run_id=task.run_id, exit_code=exit_code, note=note))

    def close(self, join_timeout_s: float) -> None:
        """The terminal ends: the git job is cancelled, and every op still queued or running gets its RunDone."""
        job, self._graph_job = self._graph_job, None
        if job is not None:
            job.cancel()
            job.join(timeout=join_timeout_s)
        self._answer_unfinished()

    def _answer_unfinished(self) -> None:
        tasks = [self._current] if self._current is not None else []
        tasks.extend(self._queue)
        self._current = None
        self._queue.clear()
        for task in tasks:
            self._send_finished(task, EXIT_UNAVAILABLE, "kernel-runner: the terminal stopped before this command finished\n")


__all__ = ["CommandRunner"]
