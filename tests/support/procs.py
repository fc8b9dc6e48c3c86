"""Process assertions: what a pid left behind, and that it is gone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import psutil


def descendants(pid: int | None = None) -> list[psutil.Process]:
    try:
        return psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.Error:
        return []


def alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:  # gone between the check and the lookup
            pass
    return found


def assert_gone(pids: Iterable[int], *, timeout: float) -> None:
    """Wait (bounded) until none of `pids` is alive; a zombie counts as gone."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if alive(pid)}
        if pending:
            psutil.wait_procs(_processes(pending), timeout=0.05)
    assert not pending, f"processes still alive: {sorted(pending)}"
