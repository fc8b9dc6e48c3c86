"""What the agent gets for a request that no child can take, so no request is ever left without its answer.

The child directory calls these (as a child spec's `reject`) when a child is gone for good, shutting down, or has
too many messages waiting. `untaken_run_answers` is the one "this run could not run" answer; the language runner
sends the same when it stops with runs still queued (docs/architecture.md §5).
"""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from kernel_runner.ids import LANG_CHILD, ChildId
from kernel_runner.messages import (
    AppsResult,
    AwaitServiceStart,
    CompleteCode,
    CompletionResult,
    Finished,
    GetApps,
    ModelServiceResult,
    Output,
    RunDone,
    RunTask,
    ServiceResult,
    StartModelService,
    StartService,
    ToAgent,
)
from kernel_runner.observability.debug_lines import debug
from kernel_runner.supervision.directory import ChildDirectory, Reject
from kernel_runner.wire.outbox import RouterLink

EXIT_NOT_RUN = 127


def untaken_run_answers(task: RunTask, why: str) -> tuple[ToAgent, ToAgent]:
    """A stderr line saying why, then the run's one Finished with 127 (the shell's "could not run")."""
    text = f"kernel-runner: the {task.kind} request could not run: {why}\n"
    return Output(stream="stderr", data=text.encode("utf-8", errors="replace")), Finished(kind=task.kind,
                                                                                         exit_code=EXIT_NOT_RUN)


def lang_runner_reject(router: RouterLink) -> Reject:
    """For the language runner: with it gone, nobody else will send these runs' Finished, so answer them here."""

    def reject(message: object) -> None:
        match message:
            case RunTask():
                for reply in untaken_run_answers(message, "the language runner is not available"):
                    router.tell(reply)
            case CompleteCode():
                router.tell(CompletionResult(items=()))
            case _:
                logger.bind(child=LANG_CHILD).info("not running; dropped {}", type(message).__name__)

    return reject


def delegate_reject(directory: ChildDirectory, router: RouterLink, *, what: str) -> Reject:
    """For a query delegate (kernel, terminal): the language runner still sends the run's Finished, with a note."""

    def reject(message: object) -> None:
        match message:
            case RunTask():
                note = f"kernel-runner: query mode is unavailable: {what} is not running\n"
                directory.tell(LANG_CHILD, RunDone(run_id=message.run_id, exit_code=EXIT_NOT_RUN, note=note))
            case CompleteCode():
                router.tell(CompletionResult(items=()))
            case _:
                logger.bind(child="directory").info("{} is not running; dropped {}", what, type(message).__name__)

    return reject


def services_reject(router: RouterLink) -> Reject:
    """For the service manager: every service op has a reply, and the agent waits for it."""

    def reject(message: object) -> None:
        why = "the service manager is not available"
        match message:
            case StartService(reply=reply) if reply is not None:  # an operator's start: answered to them
                reply(ServiceResult(status="failed", error=why))
            case StartService():
                router.tell(ServiceResult(status="failed", error=why))
            case StartModelService():
                router.tell(ModelServiceResult(status="failed", error=why))
            case GetApps():
                router.tell(AppsResult(apps=()))
            case _:
                logger.bind(child="services").info("{}; dropped {}", why, type(message).__name__)

    return reject


def service_reject(name: str) -> Reject:
    """For one service: a later start-service waiting for it (AwaitServiceStart) is answered even when it is gone."""

    def reject(message: object) -> None:
        match message:
            case AwaitServiceStart():
                message.reply(ServiceResult(status="failed", error=f"the process did not start properly: {name}"))
            case _:
                debug(logger.bind(child=f"service:{name}"), "not running; dropped {}", type(message).__name__)

    return reject


def unknown_child_reject(directory: ChildDirectory, router: RouterLink) -> Callable[[ChildId, object], None]:
    """For ids nobody registered (a harness without that child): answer as the id's role would be answered."""
    lang = lang_runner_reject(router)
    services = services_reject(router)

    def reject(child_id: ChildId, message: object) -> None:
        if child_id == LANG_CHILD:
            lang(message)
        elif isinstance(message, StartService | StartModelService | GetApps):
            services(message)
        else:
            delegate_reject(directory, router, what=f"the {child_id} child")(message)

    return reject


__all__ = [
    "EXIT_NOT_RUN",
    "delegate_reject",
    "lang_runner_reject",
    "service_reject",
    "services_reject",
    "unknown_child_reject",
    "untaken_run_answers",
]
