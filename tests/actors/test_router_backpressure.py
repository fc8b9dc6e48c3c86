"""Output credits: a producer blocks while the agent is not reading, then everything arrives in order.

Credits bound bytes as well as chunks (docs/architecture.md §5.6), and chunks that piled up may leave merged into
records of at most 1 MiB (docs/protocol.md §2.5), so the agent side checks the byte stream, not the chunking.
"""

from __future__ import annotations

import threading

import zmq

from kernel_runner import RunnerHandle
from kernel_runner.wire.outbox import CREDIT_BYTES, MAX_RECORD_BYTES
from tests.support.waiting import wait_until

CHUNK = 64 * 1024
TOTAL = 1000


def numbered_chunk(index: int, size: int) -> bytes:
    return index.to_bytes(4, "big") * (size // 4)


def read_stream(runner: RunnerHandle, expected: bytes) -> int:
    """Read stdout until `expected` has arrived; every record continues it exactly. Returns the record count."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{runner.ports.port_out}")
    got = 0
    records = 0
    try:
        while got < len(expected):
            assert pull.poll(10_000), f"nothing arrived after byte {got} of {len(expected)}"
            kind, data = pull.recv_multipart()
            assert kind == b"stdout"
            assert len(data) <= MAX_RECORD_BYTES, f"a record of {len(data)} bytes"
            assert data == expected[got: got + len(data)], f"stdout diverged at byte {got}"
            got += len(data)
            records += 1
    finally:
        pull.close(linger=0)
    return records


def produce_in_thread(runner: RunnerHandle, chunks: list[bytes]) -> tuple[threading.Thread, list[int]]:
    sent = [0]

    def produce() -> None:
        for chunk in chunks:
            runner.router_link.send_output("stdout", chunk)
            sent[0] += 1

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    return producer, sent


def test_producer_blocks_without_an_agent_and_nothing_is_lost(runner: RunnerHandle) -> None:
    chunks = [numbered_chunk(index, CHUNK) for index in range(TOTAL)]
    producer, sent = produce_in_thread(runner, chunks)
    credits = runner.config.output_credits
    wait_until(lambda: sent[0] >= credits, timeout=10, what="the first credits to be used")
    producer.join(timeout=0.3)
    assert producer.is_alive(), "the producer must be held back while no agent reads"
    assert sent[0] <= credits + 1, f"{sent[0]} chunks were taken with only {credits} credits"

    read_stream(runner, b"".join(chunks))
    producer.join(timeout=5)
    assert not producer.is_alive() and sent[0] == TOTAL


def test_credits_bound_bytes_not_only_chunks(runner: RunnerHandle) -> None:
    """Chunks of 1 MiB take a credit per 256 KiB: a quarter as many are let through before the agent reads."""
    chunks = [numbered_chunk(index, MAX_RECORD_BYTES) for index in range(40)]
    producer, sent = produce_in_thread(runner, chunks)
    per_chunk = MAX_RECORD_BYTES // CREDIT_BYTES
    allowed = runner.config.output_credits // per_chunk
    wait_until(lambda: sent[0] >= allowed, timeout=10, what="the first credits to be used")
    producer.join(timeout=0.3)
    assert producer.is_alive(), "the producer must be held back while no agent reads"
    assert sent[0] <= allowed + 1, f"{sent[0]} chunks of 1 MiB were taken with {runner.config.output_credits} credits"

    read_stream(runner, b"".join(chunks))
    producer.join(timeout=5)
    assert not producer.is_alive() and sent[0] == len(chunks)
