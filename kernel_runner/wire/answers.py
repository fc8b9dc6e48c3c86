"""Every answer the agent gets for a request is built here, and sent through the request's reply-once handle.

A request with a reply (a run, `complete`, `get-apps`, `start-service`, `start-model-service`) carries an Answer
(messages.Answer, messages.ServiceAnswer) from the moment it is routed (actors/router: route_request). Whoever ends up
with the request answers through it: the language runner a run (`finished`, after the run's outputs), the language
runner or the kernel a completion, the service manager get-apps and a start it decides itself, the new ServiceActor
(or a model's health checker) a start once it is up or has failed. Only the first answer goes out; a second one is
dropped and logged, so "exactly one answer per request" is this module's property (tests/unit/test_answers.py).

When nobody can take a request (its child is gone for good, shutting down, or has too many messages waiting), the
child directory calls the child spec's `reject`, made here: it refuses the request, which sends the request's
default answer (docs/architecture.md §5.4). A run's default is one stderr line saying why and `finished` with 127.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

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
    RunKind,
    RunTask,
    ServiceResult,
    StartModelService,
    StartService,
    StartStatus,
    ToAgent,
)
from kernel_runner.observability.debug_lines import debug
from kernel_runner.supervision.directory import ChildDirectory, Reject

EXIT_NOT_RUN = 127  # the shell's "could not run"
LANG_RUNNER_GONE = "the language runner is not available"
SERVICES_GONE = "the service manager is not available"

# Where an answer for the agent goes: the RouterLink's `tell` (wire/outbox.py), in whatever thread answers.
Deliver = Callable[[ToAgent], None]


class _Once:
    """What every answer shares: the first `send` or `refuse` delivers, in whichever thread it comes; later ones are
    dropped and logged."""

    __slots__ = ("_answered", "_deliver", "_lock")
    what = "a request"

    def __init__(self, deliver: Callable[[Any], None]) -> None:
        self._deliver = deliver
        self._lock = threading.Lock()
        self._answered = False

    @property
    def answered(self) -> bool:
        return self._answered

    def _send(self, *replies: object) -> bool:
        with self._lock:
            first, self._answered = not self._answered, True
        if not first:
            logger.bind(child="answers").warning("{} was answered already; a second answer is dropped: {}", self.what,
                                                 ", ".join(repr(reply) for reply in replies))
            return False
        for reply in replies:
            self._deliver(reply)
        return True


class RunAnswer(_Once):
    """A clean/build/exec/code run's one `finished` (`clean-finished`, `build-finished`): its exit code."""

    __slots__ = ("kind",)
    what = "a run"

    def __init__(self, deliver: Deliver, kind: RunKind) -> None:
        super().__init__(deliver)
        self.kind: RunKind = kind

    def send(self, exit_code: int, /) -> bool:
        return self._send(Finished(kind=self.kind, exit_code=exit_code))

    def refuse(self, why: str, /) -> bool:
        text = f"kernel-runner: the {self.kind} request could not run: {why}\n"
        return self._send(Output(stream="stderr", data=text.encode("utf-8", errors="replace")),
                          Finished(kind=self.kind, exit_code=EXIT_NOT_RUN))


class CompletionAnswer(_Once):
    """`complete`: the matches; by default none (the agent waits for an answer whatever happens, docs/protocol.md
    §10.1 #1)."""

    __slots__ = ()
    what = "a completion"

    def __init__(self, deliver: Deliver) -> None:
        super().__init__(deliver)

    def send(self, matches: tuple[str, ...], /) -> bool:
        return self._send(CompletionResult(items=matches))

    def refuse(self, why: str, /) -> bool:
        return self._send(self.default(why))

    @staticmethod
    def default(_why: str) -> CompletionResult:
        return CompletionResult(items=())


class AppsAnswer(_Once):
    """`get-apps`: the service list; by default an empty one."""

    __slots__ = ()
    what = "get-apps"

    def __init__(self, deliver: Deliver) -> None:
        super().__init__(deliver)

    def send(self, apps: Sequence[Any], /) -> bool:
        return self._send(AppsResult(apps=tuple(apps)))

    def refuse(self, why: str, /) -> bool:
        return self._send(self.default(why))

    @staticmethod
    def default(_why: str) -> AppsResult:
        return AppsResult(apps=())


class ServiceStartAnswer(_Once):
    """`start-service`: `started`, `running` or `failed` with the error text (the default: `why`).

    An operator's start (`at_child_start`) is answered to a callback instead of the agent (docs/operations.md §1);
    it is called in the answering actor's thread, so it must only hand the value on.
    """

    __slots__ = ("at_child_start",)
    what = "a start-service"

    def __init__(self, deliver: Callable[[ServiceResult], None], *, at_child_start: bool = False) -> None:
        super().__init__(deliver)
        self.at_child_start = at_child_start

    def send(self, status: StartStatus, error: str | None = None, /) -> bool:
        return self._send(ServiceResult(status=status, error=error))

    def refuse(self, why: str, /) -> bool:
        return self._send(self.default(why))

    @staticmethod
    def default(why: str) -> ServiceResult:
        return ServiceResult(status="failed", error=why)


class ModelStartAnswer(_Once):
    """`start-model-service`: the same statuses as a start-service, as `model-service-result`."""

    __slots__ = ()
    what = "a start-model-service"
    at_child_start = False

    def __init__(self, deliver: Deliver) -> None:
        super().__init__(deliver)

    def send(self, status: StartStatus, error: str | None = None, /) -> bool:
        return self._send(ModelServiceResult(status=status, error=error))

    def refuse(self, why: str, /) -> bool:
        return self._send(self.default(why))

    @staticmethod
    def default(why: str) -> ModelServiceResult:
        return ModelServiceResult(status="failed", error=why)


def operator_start_answer(reply: Callable[[ServiceResult], None]) -> ServiceStartAnswer:
    """An operator's start (`kernel-runner ctl start service:NAME`): `started` as soon as the supervisor started the
    child (the operator's command then waits for it to run), `running`, or `failed`; the service answers nobody."""
    return ServiceStartAnswer(reply, at_child_start=True)


_DEFAULT_FOR_OP: dict[str, Callable[[str], ToAgent]] = {
    "start-service": ServiceStartAnswer.default,
    "start-model-service": ModelStartAnswer.default,
    "complete": CompletionAnswer.default,
    "get-apps": AppsAnswer.default,
}


def bad_request_answer(op: str, why: str) -> ToAgent | None:
    """A frame that never became a request still gets its op's default answer, where the op has one
    (docs/protocol.md §3.6): the agent never waits for nothing. Runs have none (their `finished` needs a run)."""
    default = _DEFAULT_FOR_OP.get(op)
    return None if default is None else default(why)


# ---- rejects: the child spec's answer for what no incarnation of the child can take --------------------------------


def lang_runner_reject() -> Reject:
    """For the language runner: with it gone, nobody else will send these runs' `finished`, so refuse them here."""

    def reject(message: object) -> None:
        match message:
            case RunTask() | CompleteCode():
                message.answer.refuse(LANG_RUNNER_GONE)
            case _:
                logger.bind(child=LANG_CHILD).info("not running; dropped {}", type(message).__name__)

    return reject


def delegate_reject(directory: ChildDirectory, *, what: str) -> Reject:
    """For a query delegate (kernel, terminal, Polly): the language runner still sends the run's `finished`, with a
    note, since it owns the run's answer; a completion is refused here."""

    def reject(message: object) -> None:
        match message:
            case RunTask():
                note = f"kernel-runner: query mode is unavailable: {what} is not running\n"
                directory.tell(LANG_CHILD, RunDone(run_id=message.run_id, exit_code=EXIT_NOT_RUN, note=note))
            case CompleteCode():
                message.answer.refuse(f"{what} is not running")
            case _:
                logger.bind(child="directory").info("{} is not running; dropped {}", what, type(message).__name__)

    return reject


def services_reject() -> Reject:
    """For the service manager: every service op but shutdown-service has an answer, and the agent waits for it."""

    def reject(message: object) -> None:
        match message:
            case StartService() | StartModelService() | GetApps():
                message.answer.refuse(SERVICES_GONE)
            case _:
                logger.bind(child="services").info("{}; dropped {}", SERVICES_GONE, type(message).__name__)

    return reject


def service_reject(name: str) -> Reject:
    """For one service: a later start-service waiting for it (AwaitServiceStart) is answered even when it is gone."""

    def reject(message: object) -> None:
        match message:
            case AwaitServiceStart():
                message.answer.refuse(f"the process did not start properly: {name}")
            case _:
                debug(logger.bind(child=f"service:{name}"), "not running; dropped {}", type(message).__name__)

    return reject


def unknown_child_reject(directory: ChildDirectory) -> Callable[[ChildId, object], None]:
    """For ids nobody registered (a harness without that child): answer as the id's role would be answered."""
    lang = lang_runner_reject()
    services = services_reject()

    def reject(child_id: ChildId, message: object) -> None:
        if child_id == LANG_CHILD:
            lang(message)
        elif isinstance(message, StartService | StartModelService | GetApps):
            services(message)
        else:
            delegate_reject(directory, what=f"the {child_id} child")(message)

    return reject


__all__ = [
    "EXIT_NOT_RUN",
    "LANG_RUNNER_GONE",
    "SERVICES_GONE",
    "AppsAnswer",
    "CompletionAnswer",
    "Deliver",
    "ModelStartAnswer",
    "RunAnswer",
    "ServiceStartAnswer",
    "bad_request_answer",
    "delegate_reject",
    "lang_runner_reject",
    "operator_start_answer",
    "service_reject",
    "services_reject",
    "unknown_child_reject",
]
