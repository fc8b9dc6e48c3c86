"""Faults injected into real threads of a real runner (the code under test runs unchanged otherwise)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def once(exception: BaseException, original: Callable[..., Any]) -> Callable[..., Any]:
    """`original`, except that its first call raises `exception` (a fault injected into a real thread)."""
    calls = []

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise exception
        return original(*args, **kwargs)

    return patched
