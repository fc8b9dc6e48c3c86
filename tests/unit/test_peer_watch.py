"""PeerWatch: the frame-limit hint only for a peer that ZeroMQ dropped, never for one that went away (docs/protocol.md
§2.7). Pure logic with given times; the real sockets are in tests/integration/test_hostile_input.py."""

from __future__ import annotations

from kernel_runner.actors.router.agent_link import REDIAL_WINDOW_S, PeerWatch


def test_an_input_peer_that_dials_again_at_once_with_its_output_still_there_gets_the_hint() -> None:
    watch = PeerWatch()
    assert watch.input_connected(now=1.0) is None  # a first connection is just that
    watch.input_dropped(now=10.0)
    after_s = watch.input_connected(now=10.15)
    assert after_s is not None and abs(after_s - 0.15) < 1e-9


def test_a_peer_that_went_away_gets_no_hint_whichever_connection_closed_first() -> None:
    input_first, output_first = PeerWatch(), PeerWatch()
    input_first.input_dropped(now=10.0)
    input_first.output_dropped(now=10.001)
    output_first.output_dropped(now=10.0)
    output_first.input_dropped(now=10.001)
    for watch in (input_first, output_first):
        assert watch.input_connected(now=10.2) is None  # the next client, not the same one back


def test_a_late_return_or_a_second_accept_gets_no_hint() -> None:
    watch = PeerWatch()
    watch.input_dropped(now=10.0)
    assert watch.input_connected(now=10.0 + REDIAL_WINDOW_S + 0.1) is None
    watch.input_dropped(now=20.0)
    assert watch.input_connected(now=20.1) is not None
    assert watch.input_connected(now=20.2) is None  # one drop, one hint
