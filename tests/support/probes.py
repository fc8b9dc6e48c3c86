"""The reliability suites' pytest plugin: `--chaos` (the long versions), and the tried / survived / lost table.

A *probe* is one kind of fault or input (kill -9 the kernel during a query, SIGHUP under load, a fuzzed example).
Tests count every attempt of a probe through the `probes` fixture; `make chaos` prints the table at the end of the
session. In `make test` the same tests run their short versions and nothing is printed.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from types import TracebackType

import attrs
import pytest

LONG_TIMEOUT_S = 3600  # a long version may run for minutes; pytest-timeout's 120 s stays for the short ones


@attrs.define
class ProbeRow:
    tried: int = 0
    survived: int = 0
    lost: int = 0
    first_loss: str | None = None


@attrs.frozen
class Scale:
    """Short in `make test`, long in `make chaos` (`--chaos`): repetitions and flood sizes pick from here."""

    long: bool

    def pick(self, short: int, long: int) -> int:
        return long if self.long else short


class Attempt:
    """One attempt of a probe; counts as survived unless its block raises. `swallow` keeps a long run going after a
    loss (the repetition loop fails the test at its end instead)."""

    def __init__(self, row: ProbeRow, *, swallow: bool) -> None:
        self.row = row
        self.swallow = swallow
        self.failure: str | None = None

    def __enter__(self) -> Attempt:
        self.row.tried += 1
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None:
            self.row.survived += 1
            return False
        if not isinstance(exc, (Exception, pytest.fail.Exception)):  # KeyboardInterrupt, a timeout: not a loss
            return False
        self.row.lost += 1
        self.failure = "".join(traceback.format_exception_only(kind, exc)).strip()
        if self.row.first_loss is None:
            self.row.first_loss = self.failure.splitlines()[0][:200]
        return self.swallow


class ProbeTally:
    def __init__(self) -> None:
        self.rows: dict[str, ProbeRow] = {}

    def row(self, probe: str) -> ProbeRow:
        return self.rows.setdefault(probe, ProbeRow())

    def attempt(self, probe: str) -> Attempt:
        """A single attempt: a loss fails the test at once."""
        return Attempt(self.row(probe), swallow=False)

    def repeat(self, probe: str, times: int) -> Iterator[Attempt]:
        """`times` attempts, each `with`-ed by the caller; after the last, the test fails if any was lost."""
        failures: list[str] = []
        for _ in range(times):
            attempt = Attempt(self.row(probe), swallow=True)
            yield attempt
            if attempt.failure is not None:
                failures.append(attempt.failure)
        if failures:
            pytest.fail(f"{probe}: {len(failures)} of {times} attempts lost; first:\n{failures[0]}", pytrace=False)

    def table(self) -> list[str]:
        width = max([len("probe"), *(len(name) for name in self.rows)])
        lines = [f"| {'probe'.ljust(width)} | tried | survived | lost |", f"|{'-' * (width + 2)}|------:|---------:|-----:|"]
        for name, row in sorted(self.rows.items()):
            lines.append(f"| {name.ljust(width)} | {row.tried:5d} | {row.survived:8d} | {row.lost:4d} |")
        return lines


_TALLY = ProbeTally()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos", action="store_true", default=False,
                     help="run the long versions of the reliability suites and print the probe table (`make chaos`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--chaos"):
        return
    for item in items:
        if item.get_closest_marker("reliability") is not None:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S), append=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if not config.getoption("--chaos") or not _TALLY.rows:
        return
    terminalreporter.section("reliability probes (tried / survived / lost)")
    for line in _TALLY.table():
        terminalreporter.write_line(line)
    for name, row in sorted(_TALLY.rows.items()):
        if row.first_loss:
            terminalreporter.write_line(f"first loss of {name}: {row.first_loss}")


@pytest.fixture(scope="session")
def probes() -> ProbeTally:
    return _TALLY


@pytest.fixture(scope="session")
def scale(pytestconfig: pytest.Config) -> Scale:
    return Scale(long=bool(pytestconfig.getoption("--chaos")))

