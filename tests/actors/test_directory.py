"""The child directory: messages reach the current incarnation, wait between incarnations, and are never lost or
reordered across restarts; children that are gone answer through their reject."""

from __future__ import annotations

import random
import threading
from typing import Any

import pykka

from kernel_runner.ids import ChildId
from kernel_runner.supervision.actor import SupervisedActor
from kernel_runner.supervision.directory import ChildDirectory
from kernel_runner.supervision.exits import Crashed
from kernel_runner.supervision.policy import Backoff, IntensityLimit
from kernel_runner.supervision.spec import ChildContext, ChildSpec, ChildState, StopChild
from tests.support.tree import Tree
from tests.support.waiting import Recorder, wait_until

A = ChildId("a")


def test_messages_wait_until_attach_and_keep_their_order(recorder: Recorder) -> None:
    directory = ChildDirectory()
    directory.register(A, None)
    directory.tell(A, 1)
    directory.tell(A, 2)
    assert recorder.messages == []
    directory.attach(A, 1, recorder.ref)
    directory.tell(A, 3)
    recorder.wait_for(lambda m: m == 3, timeout=5)
    assert recorder.messages == [1, 2, 3]


def test_handed_back_work_goes_ahead_of_what_arrived_after_detach(recorder: Recorder) -> None:
    directory = ChildDirectory()
    directory.register(A, None)
    directory.attach(A, 1, recorder.ref)
    directory.detach(A, 1)
    directory.tell(A, "new")
    directory.hand_back(A, 1, "old 1")
    directory.hand_back(A, 1, "old 2")
    directory.attach(A, 2, recorder.ref)
    recorder.wait_for(lambda m: m == "new", timeout=5)
    assert recorder.messages == ["old 1", "old 2", "new"]


def test_a_closed_child_rejects_what_is_held_and_everything_later() -> None:
    rejected: list[object] = []
    directory = ChildDirectory()
    directory.register(A, rejected.append)
    directory.tell(A, "held")
    directory.close(A, "it gave up")
    directory.tell(A, "later")
    assert rejected == ["held", "later"]
    directory.register(A, rejected.append)  # started again: held, not rejected
    directory.tell(A, "again")
    assert rejected == ["held", "later"]


def test_the_held_queue_is_bounded_and_overflow_is_rejected() -> None:
    rejected: list[object] = []
    directory = ChildDirectory(held_limit=3)
    directory.register(A, rejected.append)
    for number in range(5):
        directory.tell(A, number)
    assert rejected == [3, 4]


def test_unknown_ids_go_to_the_unknown_handler() -> None:
    seen: list[tuple[ChildId, object]] = []
    directory = ChildDirectory(unknown=lambda child_id, message: seen.append((child_id, message)))
    directory.tell(ChildId("nobody"), "hello")
    assert seen == [(ChildId("nobody"), "hello")]


def test_a_dead_incarnation_that_did_not_detach_does_not_lose_the_message(recorder: Recorder) -> None:
    directory = ChildDirectory()
    directory.register(A, None)
    dead = Recorder()
    directory.attach(A, 1, dead.ref)
    dead.stop()
    directory.tell(A, "kept")  # ActorDeadError inside: held for the next incarnation
    directory.attach(A, 2, recorder.ref)
    recorder.wait_for(lambda m: m == "kept", timeout=5)


def test_a_reject_may_tell_through_the_directory_itself(recorder: Recorder) -> None:
    directory = ChildDirectory()
    directory.register(ChildId("b"), None)
    directory.attach(ChildId("b"), 1, recorder.ref)
    directory.register(A, lambda message: directory.tell(ChildId("b"), ("rejected", message)))
    directory.close(A, "gone")
    directory.tell(A, "x")
    recorder.wait_for(lambda m: m == ("rejected", "x"), timeout=5)


class Flaky(SupervisedActor):
    """Records numbers; now and then it ends right after recording one, with more of them still in its inbox."""

    redeliverable = (int,)

    def __init__(self, *, ctx: ChildContext, seen: list[int], lock: threading.Lock, rng: random.Random) -> None:
        super().__init__(ctx=ctx)
        self.seen, self.lock, self.rng = seen, lock, rng

    def start_child(self) -> None:
        self.set_state(ChildState.RUNNING)

    def handle(self, message: object) -> object:
        assert isinstance(message, int)
        with self.lock:
            self.seen.append(message)
            quit_now = self.rng.random() < 0.05
        if quit_now:
            self.finish(Crashed(error="flaky"))
        return None


def test_no_message_is_lost_or_reordered_across_many_restarts() -> None:
    tree = Tree()
    seen: list[int] = []
    lock = threading.Lock()
    rng = random.Random(4)

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return Flaky.start(ctx=ctx, seen=seen, lock=lock, rng=rng)

    try:
        tree.start(ChildSpec(child_id=A, factory=factory, backoff=Backoff(initial_s=0.0, cap_s=0.01, jitter=0.0),
                             intensity=IntensityLimit(max_restarts=10_000, period_s=60)))
        count = 500

        def produce() -> None:
            for number in range(count):
                tree.tell_child(A, number)

        producers = [threading.Thread(target=produce)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join(timeout=30)
        wait_until(lambda: len(seen) >= count, timeout=90, what=f"{count} numbers recorded")
        with lock:
            assert seen == list(range(count))
        assert tree.children()[A].restarts >= 5, "the test must really restart the child several times"
        tree.supervisor.tell(StopChild(child_id=A, reason="test over"))
        wait_until(lambda: A not in tree.children(), timeout=5, what="stopped")
    finally:
        tree.close()


def test_an_incarnation_that_ended_before_it_was_attached_gets_nothing(recorder: Recorder) -> None:
    # A start that fails at once: the incarnation detaches (ends) before the supervisor gets to attach it.
    directory = ChildDirectory()
    directory.register(A, None)
    directory.tell(A, "held")
    gone = Recorder()
    directory.detach(A, 1)
    directory.attach(A, 1, gone.ref)
    gone.stop()
    directory.tell(A, "later")
    directory.attach(A, 2, recorder.ref)
    recorder.wait_for(lambda m: m == "later", timeout=5)
    assert recorder.messages == ["held", "later"]


def test_attaching_a_dead_incarnation_keeps_the_messages_held(recorder: Recorder) -> None:
    directory = ChildDirectory()
    directory.register(A, None)
    directory.tell(A, 1)
    directory.tell(A, 2)
    dead = Recorder()
    dead.stop()
    directory.attach(A, 1, dead.ref)  # ActorDeadError inside: nothing is lost, nothing raised
    directory.attach(A, 2, recorder.ref)
    recorder.wait_for(lambda m: m == 2, timeout=5)
    assert recorder.messages == [1, 2]
