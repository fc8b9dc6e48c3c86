"""The per-language legacy services of docs/protocol.md §6.9 as bundled data rows, used only when no definition file matches."""

from __future__ import annotations

import functools
import json
from importlib import resources

import attrs

from kernel_runner.servicedefs.errors import DefinitionError
from kernel_runner.servicedefs.schema import BASE_VARIABLES, CONVERTER, ServiceDefinition, template_problems, validation_lines

BUNDLED_FILE = "legacy.json"


@attrs.frozen(kw_only=True)
class LegacyRow:
    """One legacy service: which runners offer it, which names select it, and how it runs."""

    langs: tuple[str, ...]
    names: tuple[str, ...] = ()
    # vendor.h2o answers any name containing "h2o" (docs/protocol.md §6.9).
    name_contains: str | None = None
    # spectravis ran in its own folder; None keeps the runner's working directory.
    cwd: str | None = None
    # False for programs that listen on no port (ipython): the actor must not wait for one.
    waits_for_port: bool = True
    # Why the row looks the way it does, especially where it departs from upstream.
    note: str = ""
    definition: ServiceDefinition

    def matches(self, lang: str, name: str) -> bool:
        if lang not in self.langs:
            return False
        return name in self.names or (self.name_contains is not None and self.name_contains in name)


@attrs.frozen(kw_only=True)
class LegacyTable:
    rows: tuple[LegacyRow, ...] = ()

    def find(self, lang: str, name: str) -> LegacyRow | None:
        """Exact names win over substring rows, so vendor.h2o's `sftp` is not taken by a `*h2o*` rule."""
        exact = [row for row in self.rows if lang in row.langs and name in row.names]
        if exact:
            return exact[0]
        return next((row for row in self.rows if row.matches(lang, name)), None)

    def langs(self) -> set[str]:
        return {lang for row in self.rows for lang in row.langs}


def parse_legacy_table(raw: object, *, source: str) -> LegacyTable:
    """Structure the bundled rows with the definition converter, templates checked as for definition files.

    Raises:
        DefinitionError: the bundled data itself is wrong (a packaging bug, caught by the unit tests).
    """
    try:
        rows = CONVERTER.structure(raw, tuple[LegacyRow, ...])
    except Exception as exc:
        lines = validation_lines(exc)
        raise DefinitionError(tuple(f"{source}: {line}" for line in lines), reply="unsupported service") from exc
    problems = [
        f"{source}: {line.replace(' @ $', f' @ $[{index}].definition', 1)}"
        for index, row in enumerate(rows)
        for line in template_problems(row.definition, BASE_VARIABLES)
    ]
    if problems:
        raise DefinitionError(tuple(problems), reply="unsupported service")
    return LegacyTable(rows=rows)


@functools.cache
def bundled_legacy() -> LegacyTable:
    """Loaded once per process; the file ships inside the package (`bundled/legacy.json`)."""
    text = resources.files("kernel_runner.servicedefs").joinpath("bundled").joinpath(BUNDLED_FILE).read_text(encoding="utf-8")
    return parse_legacy_table(json.loads(text), source=BUNDLED_FILE)
