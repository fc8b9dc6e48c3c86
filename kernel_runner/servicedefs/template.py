"""Placeholder interpolation for service definitions and model start commands (docs/protocol.md §6.4).

Templates use `str.format` syntax but render only named placeholders: `{name}`, `{name[0]}` (an item of a list) and
`{name[key]}` (an item of a mapping), each looked up in the start's variables. No attribute access, no deeper
indexing, no nested fields in a format spec: with `str.format_map` itself, a model's `{ports.__class__}` reached the
runner's objects, and `{x:>999999999}` a gigabyte of padding.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from kernel_runner.excerpts import excerpt
from kernel_runner.servicedefs.errors import TemplateError

_FORMATTER = string.Formatter()
_BRACE_HINT = "write literal braces as {{ and }}"
_FORM_HINT = "a placeholder is {name}, {name[0]} or {name[key]}"
# `{root}` or `{root[item]}`, with the names str.format accepts (a ref may be called `my-config`); str.format reads a
# digits-only item as an index and anything else as a key. No `.`: that is attribute access.
_PLACEHOLDER = re.compile(r"(?P<root>[^.\[\]{}!:]+)(?:\[(?P<item>[^\[\]{}]+)\])?")
# A static format spec: fill, align, sign, width, grouping, precision, type; widths of at most three digits.
_SPEC = re.compile(r"(?:[^{}]?[<>=^])?[-+ ]?z?#?0?(?:\d{1,3})?[,_]?(?:\.\d{1,3})?[a-zA-Z%]?")
_CONVERSIONS: dict[str | None, Callable[[Any], Any]] = {None: lambda value: value, "s": str, "r": repr, "a": ascii}
# What a placeholder may reach: values of these types only (ports, runtime_path, refs), never an arbitrary object.
_LEAF_TYPES = (str, int, float, type(None))


def interpolate(template: str, variables: Mapping[str, Any]) -> str:
    """Render one template with the start's variables.

    Raises:
        TemplateError: the text starts with upstream's repr (`KeyError('x')`, docs/protocol.md §6.4) for an unknown
            variable, and always names the template and the placeholder.
    """
    try:
        fields = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"{exc!r}: cannot render template {excerpt(template)} ({_BRACE_HINT})") from None
    parts: list[str] = []
    for literal, field, spec, conversion in fields:
        parts.append(literal)
        if field is None:
            continue
        problem = _placeholder_problem(field, spec, conversion)
        if problem is not None:
            raise TemplateError(f"template {excerpt(template)}: {problem}")
        parts.append(_render(template, field, spec, conversion, variables))
    return "".join(parts)


def _render(template: str, field: str, spec: str | None, conversion: str | None, variables: Mapping[str, Any]) -> str:
    match = _PLACEHOLDER.fullmatch(field)
    assert match is not None  # _placeholder_problem checked it
    root, item = match["root"], match["item"]
    if root not in variables:
        raise TemplateError(
            f"{KeyError(root)!r}: template {excerpt(template)} uses the unknown variable {root!r}; "
            f"known variables: {_known(variables)} ({_BRACE_HINT})"
        )
    value = variables[root]
    if item is not None:
        value = _item(template, field, value, item)
    if not isinstance(value, (*_LEAF_TYPES, list, tuple, dict)):
        raise TemplateError(f"template {excerpt(template)}: {{{field}}} is a {type(value).__name__}, not a text")
    try:
        return format(_CONVERSIONS[conversion](value), spec or "")
    except (ValueError, TypeError) as exc:
        raise TemplateError(f"{exc!r}: cannot render {{{field}}} in template {excerpt(template)}") from None


def _item(template: str, field: str, value: Any, item: str) -> Any:
    try:
        if isinstance(value, list | tuple) and item.isdigit():
            return value[int(item)]
        if isinstance(value, Mapping) and not item.isdigit():
            return value[item]
    except (IndexError, KeyError) as exc:
        raise TemplateError(f"{exc!r}: template {excerpt(template)} looks up a missing item {{{field}}}") from None
    kind = "a list" if isinstance(value, list | tuple) else "a mapping" if isinstance(value, Mapping) else "no container"
    raise TemplateError(f"template {excerpt(template)}: {{{field}}} looks up an item of {kind} it cannot have")


def _placeholder_problem(field: str, spec: str | None, conversion: str | None) -> str | None:
    """Why a placeholder is refused whatever the variables are, or None."""
    shown = excerpt(f"{{{field}}}", quote=False)
    if field == "" or field.isdigit():
        return f"positional field {shown} is not supported; name a variable"
    if _PLACEHOLDER.fullmatch(field) is None:
        what = "attribute access" if "." in field else "this kind of lookup"
        return f"{shown}: {what} is not allowed; {_FORM_HINT}"
    if conversion not in _CONVERSIONS:
        return f"{shown}: unknown conversion !{conversion}"
    if spec and _SPEC.fullmatch(spec) is None:
        return f"{shown}: the format spec {spec!r} is not allowed (no nested fields, widths of at most 999)"
    return None


def template_names(template: str) -> set[str]:
    """The variable names a template reads (`{ports[0]}` → `ports`).

    Raises:
        ValueError: not valid format syntax, or a placeholder that is not allowed (positional, attribute access, …).
    """
    return set(_roots(template))


def template_problem(template: str, known: Collection[str]) -> str | None:
    """Why a template would fail for sure with these variables, or None; used to reject definitions early."""
    try:
        names = template_names(template)
    except ValueError as exc:
        return f"invalid template {excerpt(template)}: {exc} ({_BRACE_HINT})"
    unknown = sorted(names - set(known))
    if not unknown:
        return None
    listed = ", ".join(repr(name) for name in unknown)
    return (f"template {excerpt(template)} uses unknown variable {listed}; known: {', '.join(sorted(known))} "
            f"({_BRACE_HINT})")


def _roots(template: str) -> Iterator[str]:
    for _literal, field, spec, conversion in _FORMATTER.parse(template):
        if field is None:
            continue
        problem = _placeholder_problem(field, spec, conversion)
        if problem is not None:
            raise ValueError(problem)
        match = _PLACEHOLDER.fullmatch(field)
        assert match is not None
        yield match["root"]


def _known(variables: Mapping[str, Any]) -> str:
    return ", ".join(sorted(variables)) or "(none)"
