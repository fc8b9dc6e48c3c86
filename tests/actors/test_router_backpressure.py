"""Output credits: a producer blocks while the agent is not reading, then everything arrives in order."""

from __future__ import annotations

import threading

import zmq

from kernel_runner import RunnerHandle
from tests.support.waiting import wait_until

CHUNK = 64 * 1024
TOTAL = 1000


def test_producer_blocks_without_an_agent_and_nothing_is_lost(runner: RunnerHandle) -> None:
    sent = 0

    def produce() -> None:
        nonlocal sent
        for index in range(TOTAL):
            runner.router_link.send_output("stdout", index.to_bytes(4, "big") * (CHUNK // 4))
            sent += 1

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    credits = runner.config.output_credits
    wait_until(lambda: sent >= credits, timeout=10, what="the first credits to be used")
    producer.join(timeout=0.3)
    assert producer.is_alive(), "the producer must be held back while no agent reads"
    assert sent <= credits + 1, f"{sent} chunks were taken with only {credits} credits"

    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{runner.ports.port_out}")
    try:
        for index in range(TOTAL):
            assert pull.poll(10_000), f"chunk {index} never arrived"
            kind, data = pull.recv_multipart()
            assert kind == b"stdout"
            assert data[:4] == index.to_bytes(4, "big") and len(data) == CHUNK
    finally:
        pull.close(linger=0)
    producer.join(timeout=5)
    assert not producer.is_alive() and sent == TOTAL
