"""The RouterLink's queue and credits (docs/architecture.md §5.6): byte-bounded credits, merged records, order."""

from __future__ import annotations

import threading

from kernel_runner.messages import Finished, Output
from kernel_runner.wire.outbox import (
    CREDIT_BYTES,
    MAX_RECORD_BYTES,
    Credits,
    Outgoing,
    RouterLink,
    credits_for,
    merge_outputs,
)

KIB = 1024


def test_a_chunk_takes_a_credit_per_started_credit_size() -> None:
    assert credits_for(0) == 1
    assert credits_for(1) == 1
    assert credits_for(CREDIT_BYTES) == 1
    assert credits_for(CREDIT_BYTES + 1) == 2
    assert credits_for(MAX_RECORD_BYTES) == MAX_RECORD_BYTES // CREDIT_BYTES


def test_a_take_larger_than_the_budget_waits_until_nothing_is_in_flight_then_goes_alone() -> None:
    credits = Credits(2)
    stopping = threading.Event()
    assert credits.take(stopping, 1)
    taken = threading.Event()

    def take_big() -> None:
        if credits.take(stopping, 4):
            taken.set()

    thread = threading.Thread(target=take_big, daemon=True)
    thread.start()
    assert not taken.wait(0.3), "a take over the budget went ahead while a credit was in flight"
    credits.give(1)
    assert taken.wait(5), "a take over the budget never went once everything was back"
    thread.join(timeout=5)
    # While it is in flight nothing else goes; once it is back, the budget is whole again (never more).
    assert not can_take(credits, 1)
    credits.give(4)
    credits.give(4)  # given back twice: harmless, the budget stays 2
    assert can_take(credits, 2)
    assert not can_take(credits, 1)


def can_take(credits: Credits, units: int, *, within: float = 0.3) -> bool:
    """Whether `units` can be taken now: a take in a thread that is told to stop when it has not got them within
    `within` seconds (a take that gets them returns at once)."""
    stopping = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(credits.take(stopping, units)), daemon=True)
    thread.start()
    thread.join(timeout=within)
    stopping.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    return result == [True]


def test_a_waiting_producer_gives_up_once_stopping() -> None:
    credits = Credits(1)
    stopping = threading.Event()
    assert credits.take(stopping)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(credits.take(stopping)), daemon=True)
    thread.start()
    stopping.set()
    thread.join(timeout=5)
    assert result == [False]


def out(stream: str, data: bytes, *, credited: bool = True) -> Output:
    return Output(stream=stream, data=data, credited=credited)  # type: ignore[arg-type]


def test_merge_joins_runs_of_one_stream_in_order_and_sums_their_credits() -> None:
    notice = out("stderr", b"kernel-runner: note\n", credited=False)
    end = Finished(kind="exec", exit_code=0)
    items: list[Outgoing] = [
        (out("stdout", b"a"), 1),
        (out("stdout", b"b"), 1),
        (out("stderr", b"c"), 1),
        (out("stderr", b"d"), 2),
        (notice, 0),
        (out("stderr", b"e"), 1),
        (end, 0),
        (out("stdout", b"f"), 1),
    ]
    assert merge_outputs(items) == [
        (out("stdout", b"ab"), 2),
        (out("stderr", b"cd"), 3),
        (notice, 0),  # the runner's own notice stays one record of its own
        (out("stderr", b"e"), 1),
        (end, 0),
        (out("stdout", b"f"), 1),
    ]


def test_merged_records_never_exceed_the_record_limit() -> None:
    chunk = bytes(range(256)) * (300 * KIB // 256)
    items: list[Outgoing] = [(out("stdout", chunk), credits_for(len(chunk))) for _ in range(10)]
    merged = merge_outputs(items)
    assert all(isinstance(m, Output) and len(m.data) <= MAX_RECORD_BYTES for m, _ in merged)
    assert b"".join(m.data for m, _ in merged if isinstance(m, Output)) == chunk * 10
    assert sum(units for _, units in merged) == sum(units for _, units in items)
    assert len(merged) < len(items)


def test_take_merges_what_piled_up_and_every_credit_comes_back() -> None:
    link = RouterLink(64)
    woken = threading.Event()
    link.consume(woken.set)
    assert woken.is_set() and link.take() == []  # the consumer looked: the next put wakes it again
    woken.clear()
    pieces = [bytes([index]) * (4 * KIB) for index in range(60)]
    for piece in pieces:
        link.send_output("stdout", piece)
    assert woken.is_set(), "the consumer was not woken for the first chunk"
    taken = link.take()
    assert len(taken) == 1
    message, units = taken[0]
    assert isinstance(message, Output) and message.data == b"".join(pieces) and message.credited
    assert units == len(pieces)
    link.return_credit(units)
    assert can_take(link.credits, 64, within=5), "credits were lost in the merge"
