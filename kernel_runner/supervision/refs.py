"""Telling an actor that may have stopped: the one place that turns ActorDeadError into a quiet False."""

from __future__ import annotations

from typing import Any

import pykka


def tell_if_alive(ref: pykka.ActorRef[Any] | None, message: object) -> bool:
    """Helper threads and timers outlive their actor now and then; a message for a stopped actor has no reader."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
