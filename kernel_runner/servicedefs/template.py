"""Placeholder interpolation for service definitions: `str.format_map` rules (docs/protocol.md §6.4) with readable errors."""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from kernel_runner.servicedefs.errors import TemplateError

_FORMATTER = string.Formatter()
_ROOT = re.compile(r"[.\[]")
_BRACE_HINT = "write literal braces as {{ and }}"


def interpolate(template: str, variables: Mapping[str, Any]) -> str:
    """Render one template; unknown names and bad syntax become TemplateError instead of a bare KeyError.

    Raises:
        TemplateError: the text starts with upstream's repr (`KeyError('x')`, docs/protocol.md §6.4) and then says why.
    """
    try:
        return template.format_map(variables)
    except KeyError as exc:
        missing = exc.args[0] if exc.args else ""
        if missing not in template_names(template):
            # `{ref[nokey]}`: the variable exists but has no such item.
            raise TemplateError(f"{exc!r}: template {template!r} looks up a missing item") from None
        raise TemplateError(
            f"{exc!r}: template {template!r} uses the unknown variable {missing!r}; "
            f"known variables: {_known(variables)} ({_BRACE_HINT})"
        ) from None
    except (IndexError, AttributeError, ValueError, TypeError) as exc:
        raise TemplateError(f"{exc!r}: cannot render template {template!r} ({_BRACE_HINT})") from None


def template_names(template: str) -> set[str]:
    """The root variable names a template reads (`{ports[0]}` → `ports`), nested format specs included.

    Raises:
        ValueError: the template is not valid format syntax, or uses a positional field (`{}`, `{0}`).
    """
    return set(_roots(template, depth=0))


def template_problem(template: str, known: Collection[str]) -> str | None:
    """Why a template would fail for sure with these variables, or None; used to reject definitions early."""
    try:
        names = template_names(template)
    except ValueError as exc:
        return f"invalid template {template!r}: {exc} ({_BRACE_HINT})"
    unknown = sorted(names - set(known))
    if not unknown:
        return None
    listed = ", ".join(repr(name) for name in unknown)
    return f"template {template!r} uses unknown variable {listed}; known: {', '.join(sorted(known))} ({_BRACE_HINT})"


def _roots(template: str, *, depth: int) -> Iterator[str]:
    if depth > 1:
        # str.format itself refuses deeper nesting ("Max string recursion exceeded").
        raise ValueError("format specs nested too deeply")
    for _literal, field, spec, _conversion in _FORMATTER.parse(template):
        if field is None:
            continue
        root = _ROOT.split(field, maxsplit=1)[0]
        if root == "" or root.isdigit():
            raise ValueError(f"positional field {{{field}}} is not supported; name a variable")
        yield root
        if spec:
            yield from _roots(spec, depth=depth + 1)


def _known(variables: Mapping[str, Any]) -> str:
    return ", ".join(sorted(variables)) or "(none)"
