"""LangRunnerActor: the serial queue of clean/build/exec/code for the runner's language (spec §2.3)."""

from __future__ import annotations

import collections

from kernel_runner.actors.base import ChildContext, SupervisedActor
from kernel_runner.messages import (
    ChildState,
    CompleteCode,
    CompletionResult,
    FeedInput,
    Finished,
    ForwardToChild,
    InterruptRun,
    Output,
    RunTask,
    ToAgent,
)


def reject_run(message: object) -> list[ToAgent | ForwardToChild]:
    """What the agent gets for a run that no language runner can take, so it never waits for a `finished`."""
    if isinstance(message, RunTask):
        text = f"kernel-runner: the {message.kind} request could not run: the language runner is not available\n"
        return [Output(stream="stderr", data=text.encode()), Finished(kind=message.kind, exit_code=127)]
    if isinstance(message, CompleteCode):
        return [CompletionResult(items=())]
    return []


class LangRunnerActor(SupervisedActor):
    """Runs queued tasks one at a time; inline ops (input, interrupt, complete) are answered while a task runs."""

    def __init__(self, *, ctx: ChildContext, lang: str) -> None:
        super().__init__(ctx=ctx)
        self.lang = lang
        self._queue: collections.deque[RunTask] = collections.deque()
        self._current: RunTask | None = None

    def start_child(self) -> None:
        self.set_state(ChildState.RUNNING)

    def handle(self, message: object) -> object:
        match message:
            case RunTask():
                return self._handle_run_task(message)
            case FeedInput():
                return self._handle_feed_input(message)
            case InterruptRun():
                return self._handle_interrupt_run(message)
            case CompleteCode():
                return self._handle_complete_code(message)
            case _:
                return super().handle(message)

    def _handle_run_task(self, task: RunTask) -> None:
        self._queue.append(task)
        self._run_next()

    def _run_next(self) -> None:
        while self._current is None and self._queue:
            task = self._queue.popleft()
            self._run_app_task(task)

    def _run_app_task(self, task: RunTask) -> None:
        # spec §8.1: the app runner has services only; batch ops answer 0 with a warning.
        if task.kind == "code":
            self.log.warning("query mode is not available for {}", self.lang)
            self.ctx.router.tell(Output(stream="stderr", data=b"query mode is not available for this runner\n"))
            self.ctx.router.tell(Finished(kind="code", exit_code=127))
            return
        self.log.warning("batch-mode {} is not supported for {}; answering exit code 0", task.kind, self.lang)
        self.ctx.router.tell(Finished(kind=task.kind, exit_code=0))

    def _handle_feed_input(self, message: FeedInput) -> None:
        self.log.info("input dropped: nothing is waiting for input")

    def _handle_interrupt_run(self, message: InterruptRun) -> None:
        self.log.info("interrupt: nothing is running")

    def _handle_complete_code(self, message: CompleteCode) -> None:
        self.ctx.router.tell(CompletionResult(items=()))
