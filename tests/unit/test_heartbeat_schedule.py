"""The heartbeat's schedule with explicit times: rare pings while idle, a ping as soon as a run starts, then the
usual period (docs/protocol.md §4.7)."""

from __future__ import annotations

from kernel_runner.actors.kernel.jupyter import HeartbeatWatch


def test_an_idle_kernel_is_pinged_rarely_and_a_run_is_watched_from_its_start() -> None:
    watch = HeartbeatWatch.starting(0.0, interval_s=3.0, timeout_s=15.0, idle_interval_s=60.0)
    assert watch.ping_due(0.0)
    watch.pinged(0.0, idle=True)
    watch.echoed()
    assert not watch.ping_due(59.0) and watch.next_due() == 60.0
    watch.run_started(10.0)
    assert watch.ping_due(10.0)
    watch.pinged(10.0)
    assert watch.next_due() == 13.0  # the echo is outstanding, and the next ping comes first
    assert not watch.is_lost(24.9) and watch.is_lost(25.0)  # a run on a kernel that hung while idle: 15 s, not 75


def test_run_started_never_delays_a_ping_already_due() -> None:
    watch = HeartbeatWatch.starting(0.0, interval_s=3.0, timeout_s=15.0, idle_interval_s=60.0)
    watch.pinged(0.0)
    watch.echoed()
    watch.run_started(1.0)
    assert watch.next_due() == 1.0


def test_the_idle_interval_is_never_shorter_than_the_busy_one() -> None:
    watch = HeartbeatWatch.starting(0.0, interval_s=3.0, timeout_s=15.0, idle_interval_s=1.0)
    watch.pinged(0.0, idle=True)
    assert watch.next_due() == 3.0
