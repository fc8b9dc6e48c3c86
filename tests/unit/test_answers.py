"""Exactly one answer per request (wire/answers.py): the reply-once handles, every request type's default answer
(what it gets when nobody can take it), and the router giving each request its handle."""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import kernel_runner
from kernel_runner.actors.router.actor import route_request
from kernel_runner.ids import KERNEL_CHILD, LANG_CHILD, SERVICES_CHILD, ChildId, RunId, service_child
from kernel_runner.messages import (
    AppsResult,
    AwaitServiceStart,
    BadFrame,
    CompleteCode,
    CompletionResult,
    Finished,
    GetApps,
    ModelInfo,
    ModelServiceResult,
    Output,
    RunDone,
    RunTask,
    ServiceInfo,
    ServiceResult,
    StartModelService,
    StartService,
)
from kernel_runner.supervision.directory import ChildDirectory, Reject
from kernel_runner.wire import frames as wire
from kernel_runner.wire.answers import (
    LANG_RUNNER_GONE,
    SERVICES_GONE,
    AppsAnswer,
    CompletionAnswer,
    ModelStartAnswer,
    RunAnswer,
    ServiceStartAnswer,
    delegate_reject,
    lang_runner_reject,
    operator_start_answer,
    service_reject,
    services_reject,
)

Deliveries = list[Any]

# name: (make the handle, give it its first answer, what that delivers)
FIRST_ANSWERS: dict[str, tuple[Callable[[Callable[[Any], None]], Any], Callable[[Any], bool], list[Any]]] = {
    "run": (lambda deliver: RunAnswer(deliver, "exec"), lambda answer: answer.send(0), [Finished(kind="exec", exit_code=0)]),
    "completion": (CompletionAnswer, lambda answer: answer.send(("print",)), [CompletionResult(items=("print",))]),
    "apps": (AppsAnswer, lambda answer: answer.send(({"name": "web"},)), [AppsResult(apps=({"name": "web"},))]),
    "start-service": (ServiceStartAnswer, lambda answer: answer.send("started"), [ServiceResult(status="started")]),
    "start-model-service": (ModelStartAnswer, lambda answer: answer.send("running"),
                            [ModelServiceResult(status="running")]),
    "operator's start": (operator_start_answer, lambda answer: answer.send("failed", "no port"),
                         [ServiceResult(status="failed", error="no port")]),
}


@pytest.mark.parametrize("kind", list(FIRST_ANSWERS))
def test_an_answer_given_twice_goes_out_once_and_the_second_is_logged(kind: str, log_lines: list[str]) -> None:
    make, first, expected = FIRST_ANSWERS[kind]
    delivered: Deliveries = []
    answer = make(delivered.append)
    assert not answer.answered
    assert first(answer) is True
    assert delivered == expected and answer.answered
    assert first(answer) is False
    assert answer.refuse("too late") is False
    assert delivered == expected
    assert len([line for line in log_lines if "WARNING [answers]" in line and "answered already" in line]) == 2


def test_a_refused_request_takes_no_later_answer(log_lines: list[str]) -> None:
    delivered: Deliveries = []
    answer = RunAnswer(delivered.append, "build")
    assert answer.refuse("the language runner is not available") is True
    assert answer.send(0) is False
    assert delivered == [
        Output(stream="stderr", data=b"kernel-runner: the build request could not run: the language runner is not available\n"),
        Finished(kind="build", exit_code=127),
    ]
    assert any("answered already" in line and "Finished(kind='build', exit_code=0)" in line for line in log_lines)


def test_answers_from_many_threads_at_once_send_one() -> None:
    delivered: Deliveries = []
    answer = ServiceStartAnswer(delivered.append)
    threads = 8
    barrier = threading.Barrier(threads)
    results: list[bool] = []
    lock = threading.Lock()

    def race(index: int) -> None:
        barrier.wait(timeout=10)
        sent = answer.send("failed", f"thread {index}") if index % 2 else answer.refuse(f"thread {index}")
        with lock:
            results.append(sent)

    workers = [threading.Thread(target=race, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert sorted(results) == [False] * (threads - 1) + [True]
    assert len(delivered) == 1 and delivered[0].status == "failed"


# ---- the default answer: what a request gets when its child cannot take it --------------------------------------------


class DefaultCase(NamedTuple):
    kind: str
    child_id: ChildId
    make_reject: Callable[[], Reject]
    make_request: Callable[[Callable[[Any], None]], Any]
    expected: list[Any]


def default_cases() -> list[DefaultCase]:
    info = ServiceInfo(name="web", port=8080)
    return [
        DefaultCase("exec", LANG_CHILD, lang_runner_reject,
                    lambda d: RunTask(run_id=RunId(1), kind="exec", text="true", answer=RunAnswer(d, "exec")),
                    [Output(stream="stderr",
                            data=f"kernel-runner: the exec request could not run: {LANG_RUNNER_GONE}\n".encode()),
                     Finished(kind="exec", exit_code=127)]),
        DefaultCase("code", LANG_CHILD, lang_runner_reject,
                    lambda d: RunTask(run_id=RunId(2), kind="code", text="1", answer=RunAnswer(d, "code")),
                    [Output(stream="stderr",
                            data=f"kernel-runner: the code request could not run: {LANG_RUNNER_GONE}\n".encode()),
                     Finished(kind="code", exit_code=127)]),
        DefaultCase("complete", LANG_CHILD, lang_runner_reject,
                    lambda d: CompleteCode(code="pri", answer=CompletionAnswer(d)), [CompletionResult(items=())]),
        DefaultCase("start-service", SERVICES_CHILD, services_reject,
                    lambda d: StartService(info=info, answer=ServiceStartAnswer(d)),
                    [ServiceResult(status="failed", error=SERVICES_GONE)]),
        DefaultCase("operator's start", SERVICES_CHILD, services_reject,
                    lambda d: StartService(info=info, answer=operator_start_answer(d)),
                    [ServiceResult(status="failed", error=SERVICES_GONE)]),
        DefaultCase("start-model-service", SERVICES_CHILD, services_reject,
                    lambda d: StartModelService(model=ModelInfo(name="m"), answer=ModelStartAnswer(d)),
                    [ModelServiceResult(status="failed", error=SERVICES_GONE)]),
        DefaultCase("get-apps", SERVICES_CHILD, services_reject,
                    lambda d: GetApps(name=None, answer=AppsAnswer(d)), [AppsResult(apps=())]),
        DefaultCase("a start waiting for a service", service_child("web"), lambda: service_reject("web"),
                    lambda d: AwaitServiceStart(answer=ServiceStartAnswer(d), within_s=8.0),
                    [ServiceResult(status="failed", error="the process did not start properly: web")]),
    ]


DEFAULT_CASES = default_cases()


@pytest.mark.parametrize("how", ["told after it closed", "held when it closed", "handed back after it closed"])
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=[case.kind for case in DEFAULT_CASES])
def test_an_unanswered_request_gets_its_default_answer_from_the_childs_reject(case: DefaultCase, how: str) -> None:
    delivered: Deliveries = []
    request = case.make_request(delivered.append)
    directory = ChildDirectory()
    directory.register(case.child_id, case.make_reject())
    if how == "held when it closed":
        directory.tell(case.child_id, request)  # no incarnation attached yet: held
        assert delivered == []
        directory.close(case.child_id, "gave up")
    elif how == "told after it closed":
        directory.close(case.child_id, "gave up")
        directory.tell(case.child_id, request)
    else:
        directory.close(case.child_id, "gave up")
        directory.hand_back(case.child_id, 1, request)  # what an ending incarnation did not do
    assert delivered == case.expected
    assert request.answer.answered and request.answer.refuse("again") is False
    assert delivered == case.expected


def test_a_gone_delegate_hands_the_run_back_to_the_language_runner_which_owns_its_answer() -> None:
    # The language runner sends every run's one `finished` (docs/architecture.md §5.2): a delegate's reject only tells
    # it the run is done, with a note, and the run's answer is left to it.
    delivered: Deliveries = []
    to_lang: list[object] = []
    directory = ChildDirectory()
    directory.register(LANG_CHILD, to_lang.append)
    directory.close(LANG_CHILD, "stands in for the language runner")  # its reject collects what is told to it
    directory.register(KERNEL_CHILD, delegate_reject(directory, what="the Jupyter kernel"))
    directory.close(KERNEL_CHILD, "gave up")
    task = RunTask(run_id=RunId(7), kind="code", text="x", answer=RunAnswer(delivered.append, "code"))
    directory.tell(KERNEL_CHILD, task)
    [done] = to_lang
    assert isinstance(done, RunDone) and (done.run_id, done.exit_code) == (7, 127)
    assert done.note is not None and "the Jupyter kernel is not running" in done.note
    assert not task.answer.answered and delivered == [], "only the language runner finishes"
    directory.tell(KERNEL_CHILD, CompleteCode(code="x", answer=CompletionAnswer(delivered.append)))
    assert delivered == [CompletionResult(items=())]


# ---- the router gives every request with a reply its answer --------------------------------------------------------------


ROUTED = [
    ([b"exec", b"ls"], RunAnswer, Finished(kind="exec", exit_code=127)),
    ([b"build", b"make"], RunAnswer, Finished(kind="build", exit_code=127)),
    ([b"code", b"1 + 1"], RunAnswer, Finished(kind="code", exit_code=127)),
    ([b"complete", b'{"code": "imp"}'], CompletionAnswer, CompletionResult(items=())),
    ([b"start-service", b'{"name": "web", "port": 8080, "protocol": "http"}'], ServiceStartAnswer,
     ServiceResult(status="failed", error="why")),
    ([b"start-model-service", json.dumps({"name": "m", "service": {"start_command": ["x"], "port": 8000}}).encode()],
     ModelStartAnswer, ModelServiceResult(status="failed", error="why")),
    ([b"get-apps", b""], AppsAnswer, AppsResult(apps=())),
]


@pytest.mark.parametrize(("frames", "answer_type", "default"), ROUTED, ids=[case[0][0].decode() for case in ROUTED])
def test_every_request_with_a_reply_is_routed_with_its_answer(frames: list[bytes], answer_type: type[Any],
                                                              default: object) -> None:
    delivered: Deliveries = []
    routed: list[Any] = []
    directory = ChildDirectory()
    for child_id in (LANG_CHILD, SERVICES_CHILD):
        directory.register(child_id, routed.append)
        directory.close(child_id, "collects what is routed to it")
    request = wire.decode(frames)
    assert not isinstance(request, BadFrame)
    route_request(request, directory=directory, deliver=delivered.append, on_event=lambda _event: None)
    [message] = routed
    answer: Any = message.answer
    assert isinstance(answer, answer_type)
    if not isinstance(message, RunTask):
        assert message == request  # the same request; its answer is not part of its value
    answer.refuse("why")
    assert delivered[-1] == default


def test_requests_without_a_reply_are_routed_as_they_came() -> None:
    routed: list[Any] = []
    directory = ChildDirectory()
    for child_id in (LANG_CHILD, SERVICES_CHILD):
        directory.register(child_id, routed.append)
        directory.close(child_id, "collects what is routed to it")
    requests = [wire.decode(frames) for frames in ([b"input", b"x"], [b"interrupt", b""], [b"shutdown-service", b'"web"'])]
    for request in requests:
        assert not isinstance(request, BadFrame)
        route_request(request, directory=directory, deliver=lambda _message: None, on_event=lambda _event: None)
    assert routed == requests and all(a is b for a, b in zip(routed, requests, strict=True))


# ---- one module builds the replies ----------------------------------------------------------------------------------------


REPLY_TYPES = {"Finished", "CompletionResult", "AppsResult", "ServiceResult", "ModelServiceResult"}
ANSWERS_MODULE = Path(kernel_runner.__file__).parent / "wire" / "answers.py"


def test_only_wire_answers_builds_a_reply() -> None:
    builders = []
    for path in Path(kernel_runner.__file__).parent.rglob("*.py"):
        if path == ANSWERS_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in REPLY_TYPES:
                builders.append(f"{path.relative_to(ANSWERS_MODULE.parents[2])}:{node.lineno} {node.func.id}")
    assert builders == []
