"""Hypothesis strategies for what an agent (or anything else that reaches port 2000) can send the runner.

Each generated message carries what the protocol owes for it (docs/protocol.md §2.2, §2.4), so a test can check the
replies. Nothing generated starts work that outlives its example: batch commands come from a tiny grammar of
harmless shell (`printf` of a quoted literal, `exit N`, empty, `*`) or are malformed on purpose (a NUL byte, longer
than the kernel's per-argument limit); model services only ever name a program that does not exist or run `exit N`
on a port nobody listens on; the fuzz runner has no service definitions and no intrinsic binaries, so `start-service`
can only be answered. The fuzz runner is the `app` language, whose `code` op has no query mode.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import msgpack
from hypothesis import strategies as st

from kernel_runner.wire import frames as wire

# docs/protocol.md §2.4: the ops with a reply, and the type of that one reply.
REPLY_OF = {
    "clean": "clean-finished",
    "build": "build-finished",
    "exec": "finished",
    "code": "finished",
    "complete": "completion",
    "status": "status",
    "start-service": "service-result",
    "start-model-service": "model-service-result",
    "get-apps": "apps-result",
}
SILENT_OPS = frozenset({"input", "interrupt", "shutdown-service", "event"})
BATCH_OPS = ("clean", "build", "exec")
RUN_END_TYPES = frozenset({"clean-finished", "build-finished", "finished"})
# The kernel's limit for one execve argument (MAX_ARG_STRLEN, 32 pages): a longer command cannot be spawned.
ARG_LIMIT = 128 * 1024
MIB = 1024 * 1024


@attrs.frozen
class Expected:
    """What one batch op must end with, when it can be known in advance (None: any value)."""

    exit_code: int | None
    stdout: bytes | None
    # The runner could not spawn the command: a `stderr` line must say why (docs/protocol.md §5.1).
    explained: bool = False


@attrs.frozen
class Message:
    frames: tuple[bytes, ...]
    # The op whose reply is owed (docs/protocol.md §2.4), or None when nothing may answer this message.
    owes: str | None = None
    # Batch ops only: the exit code and stdout the shell gives (before the failed-build rule, §5.2).
    expected: Expected | None = None

    def __repr__(self) -> str:  # hypothesis prints failing examples: keep huge frames readable
        shown = [f if len(f) <= 80 else f[:60] + b"...<%d bytes>" % len(f) for f in self.frames]
        return f"Message({shown!r}, owes={self.owes!r})"


@attrs.frozen
class Sizes:
    """How big the "huge" payloads get: modest in `make test`, bigger for `make chaos`."""

    huge_max: int


# ---- payload building blocks ---------------------------------------------------------------------------------------

def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Like one_of, but each branch drawn in proportion to its weight (one_of favours its simplest branches)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(min_value=0, max_value=len(table) - 1).flatmap(lambda index: table[index])


def json_values(max_leaves: int = 20, *, int_bits: int = 70) -> st.SearchStrategy[Any]:
    """Any JSON value; msgpack takes integers of at most 64 bits (`int_bits=63`)."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**int_bits), max_value=2**int_bits - 1),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)),
        max_leaves=max_leaves,
    )


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def _deep_nesting(depth: int, opener: bytes, closer: bytes) -> bytes:
    return opener * depth + closer * depth


def _repeated(byte: bytes, count: int) -> bytes:
    return byte * count


def any_payload(sizes: Sizes) -> st.SearchStrategy[bytes]:
    """Any bytes: random, JSON and msgpack of any shape, nesting far past any parser's recursion, huge, empty."""
    return weighted(
        (1, st.just(b"")),
        (3, st.binary(max_size=300)),
        (2, json_values().map(_json_bytes)),
        (2, json_values(int_bits=63).map(lambda value: msgpack.packb(value, use_bin_type=True))),
        (1, st.builds(_deep_nesting, st.integers(min_value=1, max_value=200_000),
                      st.sampled_from([b"[", b'{"a":', b"\x91"]), st.sampled_from([b"]", b"}", b""]))),
        (1, st.builds(_repeated, st.sampled_from([b"x", b"\xff", b" ", b"[", b"\x00"]),
                      st.integers(min_value=1, max_value=sizes.huge_max))),
    )


# ---- batch commands: harmless or malformed -------------------------------------------------------------------------

def _printf(literal: bytes) -> tuple[bytes, Expected]:
    # Inside single quotes the shell takes every byte literally; only `'` itself and NUL cannot appear.
    return b"printf '%s' '" + literal + b"'", Expected(exit_code=0, stdout=literal)


def _exit(code: int) -> tuple[bytes, Expected]:
    return b"exit %d" % code, Expected(exit_code=code, stdout=b"")


def _with_nul(before: bytes, after: bytes) -> tuple[bytes, Expected]:
    # docs/protocol.md §5.1: a command the runner cannot spawn is answered with a stderr line and 127.
    return b"printf '%s' '" + before + b"\x00" + after + b"'", Expected(exit_code=127, stdout=b"", explained=True)


def _too_long(length: int) -> tuple[bytes, Expected]:
    return b"printf '%s' '" + b"a" * length + b"'", Expected(exit_code=127, stdout=b"", explained=True)


def batch_commands(sizes: Sizes) -> st.SearchStrategy[tuple[bytes, Expected]]:
    literal = st.binary(max_size=200).map(lambda b: b.replace(b"'", b"").replace(b"\x00", b""))
    return weighted(
        (3, literal.map(_printf)),
        (1, st.sampled_from([b"", b"   ", b"\t\n"]).map(lambda c: (c, Expected(exit_code=0, stdout=b"")))),
        (1, st.just((b"*", Expected(exit_code=None, stdout=None)))),
        (2, st.integers(min_value=0, max_value=255).map(_exit)),
        (1, st.builds(_with_nul, literal, literal)),
        (1, st.integers(min_value=ARG_LIMIT, max_value=max(ARG_LIMIT + 1, min(sizes.huge_max, 4 * MIB))).map(_too_long)),
    )


# ---- service and model payloads ------------------------------------------------------------------------------------

ODD_NUMBERS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([9.3e9, 1e308, -0.0, 2**63]),
    st.text(max_size=5), st.lists(st.integers(), max_size=3),
)
SERVICE_NAMES = st.one_of(st.text(max_size=30), st.sampled_from(["sshd", "ttyd", "jupyter", "ipython", "", "../x"]))


def service_infos() -> st.SearchStrategy[bytes]:
    """`start-service` payloads close to the real shape (docs/protocol.md §6.1), with every field bent."""
    options = st.one_of(
        st.none(), json_values(6),
        st.fixed_dictionaries({}, optional={"arguments": json_values(6), "envs": json_values(6)}),
    )
    body = st.fixed_dictionaries(
        {"name": st.one_of(SERVICE_NAMES, ODD_NUMBERS)},
        optional={
            "port": ODD_NUMBERS, "ports": st.one_of(ODD_NUMBERS, st.lists(ODD_NUMBERS, max_size=4)),
            "protocol": st.one_of(st.sampled_from(["http", "tcp", "preopen", "pty", "internal"]), st.text(max_size=8)),
            "options": options,
        },
    )
    return body.map(_json_bytes)


def model_infos(closed_port: int) -> st.SearchStrategy[bytes]:
    """`start-model-service` payloads close to the real shape (docs/protocol.md §7.1).

    A program that can start is only ever `exit N` on `closed_port` (bound, never listening), so the start fails
    at once whatever the health check says; a list command names a program that does not exist.
    """
    health = st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"path": st.one_of(st.text(max_size=20), ODD_NUMBERS)},
            optional={"max_retries": ODD_NUMBERS, "max_wait_time": ODD_NUMBERS, "expected_status_code": ODD_NUMBERS,
                      "interval": ODD_NUMBERS, "initial_delay": ODD_NUMBERS},
        ),
    )
    actions = st.one_of(
        st.none(),
        st.lists(st.one_of(
            st.fixed_dictionaries({"action": st.just("log"), "args": st.fixed_dictionaries({"message": st.text(max_size=30)})}),
            st.fixed_dictionaries({"action": st.text(max_size=10).filter(lambda a: a != "log"), "args": json_values(4)}),
        ), max_size=3),
    )
    missing_program = st.lists(st.text(max_size=10), max_size=3).map(lambda rest: ["/nonexistent/fuzz-model", *rest])
    spawnable = st.fixed_dictionaries(
        {"start_command": st.integers(min_value=0, max_value=255).map(lambda n: f"exit {n}"), "port": st.just(closed_port)},
        optional={"shell": st.sampled_from(["/bin/sh", "/bin/bash", "/nonexistent/sh"]), "health_check": health,
                  "pre_start_actions": actions},
    )
    unspawnable = st.fixed_dictionaries(
        {"start_command": st.one_of(missing_program, ODD_NUMBERS), "port": ODD_NUMBERS},
        optional={"health_check": health, "pre_start_actions": actions},
    )
    body = st.fixed_dictionaries(
        {"name": st.one_of(SERVICE_NAMES, ODD_NUMBERS)},
        optional={"model_path": st.one_of(st.text(max_size=20), ODD_NUMBERS),
                  "service": st.one_of(st.none(), spawnable, unspawnable, json_values(6))},
    )
    return body.map(_json_bytes)


# ---- whole messages ------------------------------------------------------------------------------------------------

def _op_payload(op: str, sizes: Sizes, closed_port: int) -> st.SearchStrategy[Message]:
    frame = op.encode()
    if op in BATCH_OPS:
        return batch_commands(sizes).map(lambda c: Message((frame, c[0]), owes=op, expected=c[1]))
    shaped: st.SearchStrategy[bytes] | None = None
    if op == "start-service":
        shaped = service_infos()
    elif op == "start-model-service":
        shaped = model_infos(closed_port)
    elif op == "complete":
        shaped = st.fixed_dictionaries({"code": st.one_of(st.text(max_size=50), ODD_NUMBERS)},
                                       optional={"cursor_pos": ODD_NUMBERS}).map(_json_bytes)
    elif op == "shutdown-service":
        shaped = SERVICE_NAMES.map(_json_bytes)
    elif op == "event":  # docs/protocol.md §9.4: an `oom` makes a report in the log, anything else a log line
        shaped = st.fixed_dictionaries({"type": st.one_of(st.just("oom"), st.text(max_size=20), ODD_NUMBERS)},
                                       optional={"data": st.one_of(st.just({}), json_values(3))}).map(_json_bytes)
    elif op in ("input", "get-apps"):
        shaped = st.text(max_size=50).map(str.encode)
    payload = any_payload(sizes) if shaped is None else weighted((1, any_payload(sizes)), (2, shaped))
    return payload.map(lambda p: Message((frame, p), owes=op if op in REPLY_OF else None))


def well_formed_ops(sizes: Sizes, closed_port: int) -> st.SearchStrategy[Message]:
    assert set(REPLY_OF) | SILENT_OPS == set(wire.OPS), "a new op: say here what it owes (docs/protocol.md §2.4)"
    return st.sampled_from(sorted(wire.OPS)).flatmap(lambda op: _op_payload(op, sizes, closed_port))


def _unknown_op(name: bytes) -> bool:
    try:
        return name.decode("ascii") not in wire.OPS
    except UnicodeDecodeError:
        return True


OP_LIKE = st.one_of(
    st.sampled_from([op.encode() for op in sorted(wire.OPS)]),
    st.sampled_from([b"STATUS", b"status ", b"exec\x00", b"events", b"", b"\xff\xfe", b"finished", b"shutdown"]),
    st.binary(max_size=40),
)


def stray_messages(sizes: Sizes) -> st.SearchStrategy[Message]:
    """Nothing may answer these: an unknown op, or a frame count other than two (docs/protocol.md §2.2)."""
    return weighted(
        (2, st.tuples(OP_LIKE.filter(_unknown_op), any_payload(sizes)).map(lambda f: Message(tuple(f)))),
        (1, OP_LIKE.map(lambda op: Message((op,)))),
        (1, st.lists(st.one_of(OP_LIKE, any_payload(sizes)), min_size=3, max_size=4).map(lambda f: Message(tuple(f)))),
    )


def examples(sizes: Sizes, closed_port: int) -> st.SearchStrategy[list[Message]]:
    """One example: up to four messages sent back to back, mostly ops the runner knows."""
    message = weighted((4, well_formed_ops(sizes, closed_port)), (1, stray_messages(sizes)))
    return st.lists(message, min_size=0, max_size=4)
