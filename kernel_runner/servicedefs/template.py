"""The template language of service definitions and model start commands (docs/protocol.md §6.4).

Two placeholder forms render the same named values: `{name}` (Python's format syntax, the only form before 24.12) and
`${{ name }}` (24.12's form, which reads well inside shell text). A placeholder is `name`, `name[0]` (an item of a
list) or `name[key]` (an item of a mapping), with an optional conversion and a short static format spec. No attribute
access, no deeper indexing, no nested fields in a format spec: with `str.format_map` itself, a model's
`{ports.__class__}` reached the runner's objects, and `{x:>999999999}` a gigabyte of padding.

Everything else is text: `{{` and `}}` are literal braces, `$NAME` and `${NAME…}` are left for the shell. How `${{`
tells a placeholder from the older `$` + `{{` escape (`${{HOME}}` meant `${HOME}`) is in `_dollar_placeholder`.

Templates render in one of three ways: `interpolate` (every other field), `split_template` (a string command without
a shell: split into words like a shell, a placeholder's value never split) and `interpolate_argument` (a definition's
default_arguments, which were never templates before 24.12: only a valid placeholder of a known variable renders).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import attrs

from kernel_runner.excerpts import excerpt
from kernel_runner.servicedefs.errors import TemplateError

_HINT = "write literal braces as {{ and }}; a shell variable is $NAME or ${NAME}"
_FORM_HINT = "a placeholder is {name}, {name[0]} or {name[key]}"
# `root` or `root[item]`, with the names str.format accepts (a ref may be called `my-config`); a digits-only item is
# an index and anything else a key. No `.`: that is attribute access.
_NAME = re.compile(r"(?P<root>[^.\[\]{}!:]+)(?:\[(?P<item>[^\[\]{}]+)\])?")
# The spaced `${{ name }}` form always counts as a placeholder when its name reads as an identifier (see below).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# The leading name of a placeholder body, for deciding what a `${{` is before the body is checked.
_ROOT = re.compile(r"[^.\[\]{}!:\s]*")
# A static format spec: fill, align, sign, width, grouping, precision, type; widths of at most three digits.
_SPEC = re.compile(r"(?:[^{}]?[<>=^])?[-+ ]?z?#?0?(?:\d{1,3})?[,_]?(?:\.\d{1,3})?[a-zA-Z%]?")
_CONVERSIONS: dict[str | None, Callable[[Any], Any]] = {None: lambda value: value, "s": str, "r": repr, "a": ascii}
# What a placeholder may reach: values of these types only (ports, runtime_path, refs), never an arbitrary object.
_LEAF_TYPES = (str, int, float, type(None))
# Plain text with its brace escapes, matched in one go (a template may be a megabyte of `{{`): outside `${…}` and
# inside, where a `}` closes the expansion instead of pairing with the next one.
_TEXT_RUN = re.compile(r"(?:[^${}]+|\$(?!\{)|\{\{|\}\})+")
_SHELL_TEXT_RUN = re.compile(r"(?:[^${}]+|\$(?!\{)|\{\{)+")
_BRACE = re.compile(r"[{}]")
# Stands for a placeholder's value while a command is split into words; a template may not hold a NUL itself.
_MARK = re.compile("\0(\\d+)\0")
# The longest string command split without a shell: Linux's limit for one argument (MAX_ARG_STRLEN), far above any
# real command. shlex takes time quadratic in a word's length; a megabyte from the wire took it 20 s.
MAX_SPLIT_CHARS = 128 * 1024


@attrs.frozen
class _Field:
    """A placeholder that passed every form check; whether its name is known is decided when it renders."""

    root: str
    item: str | None
    conversion: str | None
    spec: str


@attrs.frozen
class _Piece:
    """A stretch of a template: `raw` as written; text is what it renders to unless it is a field or a problem."""

    raw: str
    text: str = ""
    field: _Field | None = None
    # Why it can never render: a syntax error (`syntax`, told with upstream's ValueError text) or a refused form.
    problem: str | None = None
    syntax: bool = False


def _scan(template: str, known: Collection[str]) -> Iterator[_Piece]:
    """Cut a template into text and placeholders. `known` decides only what an ambiguous `${{` is."""
    position, shell_depth = 0, 0  # shell_depth: `${` expansions open, each closed by the next `}`
    while position < len(template):
        run = (_SHELL_TEXT_RUN if shell_depth else _TEXT_RUN).match(template, position)
        if run is not None:
            raw = run.group()
            yield _Piece(raw=raw, text=raw.replace("{{", "{").replace("}}", "}"))
            position = run.end()
            continue
        piece = _special_piece(template, position, known, shell_depth)
        if piece.raw == "${":
            shell_depth += 1
        elif piece.raw == "}" and piece.problem is None:
            shell_depth -= 1
        yield piece
        position += len(piece.raw)


def _special_piece(template: str, start: int, known: Collection[str], shell_depth: int) -> _Piece:
    """What starts at `start`: `${`, a `{` that is no escape, or a `}` that is none."""
    char = template[start]
    if char == "$":
        if template.startswith("${{", start):
            piece = _dollar_placeholder(template, start, known)
            # Not a placeholder: the older reading, `$` then an escaped brace (`${{HOME}}` renders `${HOME}`).
            return piece if piece is not None else _Piece(raw="$", text="$")
        return _Piece(raw="${", text="${")  # the shell's parameter expansion, closed by the next `}`
    if char == "{":
        return _brace_placeholder(template, start)
    if shell_depth:
        return _Piece(raw="}", text="}")  # closes a `${…}`, even where `}}` follows (`${A:-${B}}`)
    return _Piece(raw="}", problem="Single '}' encountered in format string", syntax=True)


def _dollar_placeholder(template: str, start: int, known: Collection[str]) -> _Piece | None:
    """`${{ body }}`, or None where `${{` keeps its pre-24.12 meaning (`$` and an escaped `{`).

    It is a placeholder when its name is a variable the start provides, or when it is written 24.12's way, with a
    space after `${{`, and reads as a placeholder of an identifier (so a typo fails loudly). `${{HOME}}`, which meant
    the shell's `${HOME}` before, still does, as does any `${{` text that is no placeholder at all (`${{ a.b }}`).
    """
    # The body holds no brace, so the next brace must start the closing `}}`; looking no further keeps a long run
    # of unclosed `${{` linear.
    brace = _BRACE.search(template, start + 3)
    if brace is None or not template.startswith("}}", brace.start()):
        return None
    end = brace.start()
    inner = template[start + 3 : end]
    raw = template[start : end + 2]
    body = inner.strip()
    field, problem = _parse_body(body, raw)
    root_match = _ROOT.match(body)
    root = root_match.group() if root_match is not None else ""
    spaced = inner[:1].isspace()
    if root in known or (spaced and field is not None and _IDENTIFIER.fullmatch(field.root)):
        return _Piece(raw=raw, field=field, problem=problem)
    return None


def _brace_placeholder(template: str, start: int) -> _Piece:
    """`{body}`: the closing brace is found as str.format finds it, counting nested braces, so errors match it."""
    depth, position = 0, start
    for found in _BRACE.finditer(template, start):
        depth += 1 if found.group() == "{" else -1
        if depth == 0:
            position = found.start()
            break
    else:
        return _Piece(raw=template[start:], problem="expected '}' before end of string", syntax=True)
    raw = template[start : position + 1]
    body = raw[1:-1]
    nested = body.find("{")
    if nested >= 0:
        colon = body.find(":")
        if 0 <= colon < nested:
            spec = excerpt(body[colon + 1 :])
            shown = excerpt(raw, quote=False)
            return _Piece(raw=raw, problem=f"{shown}: the format spec {spec} is not allowed (no nested fields, "
                                           "widths of at most 999)")
        return _Piece(raw=raw, problem="unexpected '{' in field name", syntax=True)
    field, problem = _parse_body(body.strip(), raw)
    return _Piece(raw=raw, field=field, problem=problem)


def _parse_body(body: str, raw: str) -> tuple[_Field | None, str | None]:
    """Split `name!c:spec` as str.format does (a `[...]` may hold `:` and `!`) and check each part."""
    shown = excerpt(raw, quote=False)
    if body == "" or body.isdigit():
        return None, f"positional field {shown} is not supported; name a variable"
    index, in_item = 0, False
    while index < len(body):
        char = body[index]
        if char == "[":
            in_item = True
        elif char == "]":
            in_item = False
        elif char in "!:" and not in_item:
            break
        index += 1
    name, rest = body[:index], body[index:]
    conversion: str | None = None
    if rest.startswith("!"):
        conversion, rest = rest[1:2], rest[2:]
        if rest and not rest.startswith(":"):
            return None, f"{shown}: expected ':' after the conversion !{conversion}"
    spec = rest[1:]
    match = _NAME.fullmatch(name)
    if match is None:
        what = "attribute access" if "." in name else "this kind of lookup"
        return None, f"{shown}: {what} is not allowed; {_FORM_HINT}"
    if conversion not in _CONVERSIONS:
        return None, f"{shown}: unknown conversion !{conversion}"
    if spec and _SPEC.fullmatch(spec) is None:
        return None, f"{shown}: the format spec {spec!r} is not allowed (no nested fields, widths of at most 999)"
    return _Field(root=match["root"], item=match["item"], conversion=conversion, spec=spec), None


def _raise_problem(template: str, piece: _Piece) -> None:
    if piece.syntax:
        raise TemplateError(f"{ValueError(piece.problem)!r}: cannot render template {excerpt(template)} ({_HINT})")
    raise TemplateError(f"template {excerpt(template)}: {piece.problem}")


def interpolate(template: str, variables: Mapping[str, Any]) -> str:
    """Render one template with the start's variables.

    Raises:
        TemplateError: the text starts with upstream's repr (`KeyError('x')`, docs/protocol.md §6.4) for an unknown
            variable, and always names the template and the placeholder.
    """
    parts: list[str] = []
    for piece in _scan(template, variables.keys()):
        if piece.problem is not None:
            _raise_problem(template, piece)
        parts.append(piece.text if piece.field is None else _render(template, piece, variables))
    return "".join(parts)


def interpolate_argument(template: str, variables: Mapping[str, Any]) -> str:
    """Render a default argument: a valid placeholder naming a known variable renders, everything else stays as
    written, braces included, as when default_arguments were no templates at all (docs/protocol.md §6.4).

    Raises:
        TemplateError: a placeholder of a known variable that fails to render (an index out of range).
    """
    parts: list[str] = []
    for piece in _scan(template, variables.keys()):
        usable = piece.field is not None and piece.problem is None and piece.field.root in variables
        parts.append(_render(template, piece, variables) if usable else piece.raw)
    return "".join(parts)


def split_template(template: str, variables: Mapping[str, Any]) -> tuple[str, ...]:
    """Split a string command into words like a POSIX shell (quotes, backslashes), then render each word.

    A placeholder's value stays inside its word, whatever spaces or quotes it holds; `$NAME` is not expanded, as no
    shell runs (docs/protocol.md §6.3 `shell`).

    Raises:
        TemplateError: a template problem, an unclosed quote, or a command of no words at all.
    """
    values: list[str] = []
    marked: list[str] = []
    problem = _unsplittable(template)
    if problem is not None:
        raise TemplateError(problem)
    for piece in _scan(template, variables.keys()):
        if piece.problem is not None:
            _raise_problem(template, piece)
        if piece.field is None:
            marked.append(piece.text)
        else:
            marked.append(f"\0{len(values)}\0")
            values.append(_render(template, piece, variables))
    try:
        words = shlex.split("".join(marked))
    except ValueError as exc:
        raise TemplateError(f"{exc!r}: cannot split the command {excerpt(template)} into words") from None
    if not words:
        raise TemplateError(f"the command {excerpt(template)} has no words to run")
    return tuple(_MARK.sub(lambda mark: values[int(mark[1])], word) for word in words)


def _render(template: str, piece: _Piece, variables: Mapping[str, Any]) -> str:
    field = piece.field
    assert field is not None
    shown = excerpt(piece.raw, quote=False)
    if field.root not in variables:
        raise TemplateError(
            f"{KeyError(field.root)!r}: template {excerpt(template)} uses the unknown variable {field.root!r}; "
            f"known variables: {_known(variables)} ({_HINT})"
        )
    value = variables[field.root]
    if field.item is not None:
        value = _item(template, shown, value, field.item)
    if not isinstance(value, (*_LEAF_TYPES, list, tuple, dict)):
        raise TemplateError(f"template {excerpt(template)}: {shown} is a {type(value).__name__}, not a text")
    try:
        return format(_CONVERSIONS[field.conversion](value), field.spec)
    except (ValueError, TypeError) as exc:
        raise TemplateError(f"{exc!r}: cannot render {shown} in template {excerpt(template)}") from None


def _item(template: str, shown: str, value: Any, item: str) -> Any:
    try:
        if isinstance(value, list | tuple) and item.isdigit():
            return value[int(item)]
        if isinstance(value, Mapping) and not item.isdigit():
            return value[item]
    except (IndexError, KeyError) as exc:
        raise TemplateError(f"{exc!r}: template {excerpt(template)} looks up a missing item {shown}") from None
    kind = "a list" if isinstance(value, list | tuple) else "a mapping" if isinstance(value, Mapping) else "no container"
    raise TemplateError(f"template {excerpt(template)}: {shown} looks up an item of {kind} it cannot have")


def template_problem(template: str, known: Collection[str]) -> str | None:
    """Why a template would fail at every start with these variables, or None; used to reject definitions early."""
    unknown: list[str] = []
    for piece in _scan(template, known):
        if piece.problem is not None:
            return f"invalid template {excerpt(template)}: {piece.problem} ({_HINT})"
        if piece.field is not None and piece.field.root not in known and piece.field.root not in unknown:
            unknown.append(piece.field.root)
    if not unknown:
        return None
    listed = ", ".join(repr(name) for name in sorted(unknown))
    return f"template {excerpt(template)} uses unknown variable {listed}; known: {', '.join(sorted(known))} ({_HINT})"


def split_problem(template: str, known: Collection[str]) -> str | None:
    """template_problem, then whether the text splits into words (a closed quote, at least one word)."""
    problem = template_problem(template, known)
    if problem is not None:
        return problem
    problem = _unsplittable(template)
    if problem is not None:
        return problem
    marked = "".join(piece.text if piece.field is None else "\0" for piece in _scan(template, known))
    try:
        words = shlex.split(marked)
    except ValueError as exc:
        return f"cannot split the command {excerpt(template)} into words: {exc}"
    return None if words else f"the command {excerpt(template)} has no words to run"


def _unsplittable(template: str) -> str | None:
    if len(template) > MAX_SPLIT_CHARS:
        return (f"the command {excerpt(template)} is too long to split into words without a shell: at most "
                f"{MAX_SPLIT_CHARS} characters")
    if "\0" in template:
        return f"template {excerpt(template)}: a NUL character is not allowed"
    return None


def _known(variables: Mapping[str, Any]) -> str:
    return ", ".join(sorted(variables)) or "(none)"
