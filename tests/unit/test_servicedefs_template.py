"""Template interpolation (docs/protocol.md §6.4): named placeholders only, and errors that say what went wrong."""

from __future__ import annotations

import pytest

from kernel_runner.servicedefs.errors import ServiceStartError, TemplateError
from kernel_runner.servicedefs.template import interpolate, template_names, template_problem

VARIABLES = {"ports": [18080, 18081], "runtime_path": "/usr/bin/python3", "ref": {"out": "hello\n"}, "none": None}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{ports[0]}", "18080"),
        ("--port={ports[1]}", "--port=18081"),
        ("{runtime_path}", "/usr/bin/python3"),
        ("{ref[out]}", "hello\n"),
        ("{ports[0]:>7}", "  18080"),
        ("{runtime_path!r}", "'/usr/bin/python3'"),
        ("{{literal}}", "{literal}"),
        ("{none}", "None"),  # docs/protocol.md §6.4: an unset runtime path / None ref renders as "None"
        ("plain", "plain"),
    ],
)
def test_interpolate_follows_format_map(template: str, expected: str) -> None:
    assert interpolate(template, VARIABLES) == expected


def test_unknown_variable_keeps_upstreams_prefix_and_explains() -> None:
    with pytest.raises(TemplateError) as info:
        interpolate("--config {cfg}", VARIABLES)
    text = info.value.reply_text
    assert text.startswith("KeyError('cfg'): ")  # upstream's reply was exactly "KeyError('cfg')"
    assert "unknown variable 'cfg'" in text
    assert "known variables: none, ports, ref, runtime_path" in text
    assert isinstance(info.value, ServiceStartError)


def test_missing_item_of_a_known_variable_is_not_called_unknown() -> None:
    with pytest.raises(TemplateError) as info:
        interpolate("{ref[err]}", VARIABLES)
    assert "missing item" in info.value.reply_text


@pytest.mark.parametrize("template", ["{ports[5]}", "{", "}", "{0}", "{ports.nope}"])
def test_other_template_failures_become_template_errors(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        interpolate(template, VARIABLES)
    assert repr(template) in info.value.reply_text


def test_template_names_finds_the_roots() -> None:
    assert template_names("{a[0]} {b[key]} {c!r:>7} {{e}}") == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{ports.__class__}", "{ports.__class__}: attribute access is not allowed"),
        ("{runtime_path.__class__.__mro__}", "attribute access is not allowed"),
        ("{ref[out].__class__}", "attribute access is not allowed"),
        ("{ports[0][0]}", "{ports[0][0]}: this kind of lookup is not allowed"),
        ("{ref[]}", "this kind of lookup is not allowed"),
        ("{ports[0]:{runtime_path.__class__}}", "format spec"),
        ("{ports[0]:{width}}", "format spec"),
        ("{ports[0]:>999999999}", "widths of at most 999"),
        ("{ports!x}", "unknown conversion !x"),
    ],
)
def test_placeholders_that_reach_past_their_value_are_refused(template: str, says: str) -> None:
    with pytest.raises(TemplateError) as info:
        interpolate(template, VARIABLES)
    assert says in info.value.reply_text
    if "not allowed" in says and "spec" not in says:
        assert "a placeholder is {name}, {name[0]} or {name[key]}" in info.value.reply_text
    problem = template_problem(template, set(VARIABLES))  # definitions with it are refused when they load
    assert problem is not None and says in problem


def test_a_refused_placeholder_never_renders_the_object() -> None:
    for template in ("{ports.__class__}", "{ports.__class__.__init__.__globals__}", "{ports[0].__class__}"):
        with pytest.raises(TemplateError) as info:
            interpolate(template, VARIABLES)
        assert "<class" not in info.value.reply_text and "function" not in info.value.reply_text


def test_an_item_lookup_must_fit_the_value() -> None:
    with pytest.raises(TemplateError, match="an item of a mapping it cannot have"):
        interpolate("{ref[0]}", VARIABLES)
    with pytest.raises(TemplateError, match="an item of a list it cannot have"):
        interpolate("{ports[key]}", VARIABLES)
    with pytest.raises(TemplateError, match="an item of no container"):
        interpolate("{runtime_path[0]}", VARIABLES)


def test_names_and_keys_are_what_str_format_accepts() -> None:
    variables = {"my-config": "/tmp/c.py", "ref": {"x.y": "dotted", "a b": "spaced"}}
    assert interpolate("{my-config} {ref[x.y]} {ref[a b]}", variables) == "/tmp/c.py dotted spaced"
    assert template_problem("--config={my-config}", {"my-config"}) is None


def test_a_variable_that_is_not_text_cannot_be_rendered() -> None:
    with pytest.raises(TemplateError, match="is a object, not a text"):
        interpolate("{thing}", {"thing": object()})


def test_long_templates_are_quoted_briefly_in_errors() -> None:
    template = "{nope}" + "x" * 100_000
    with pytest.raises(TemplateError) as info:
        interpolate(template, VARIABLES)
    assert len(info.value.reply_text) < 500 and "(100006 characters)" in info.value.reply_text


def test_template_problem() -> None:
    assert template_problem("{ports[0]}", {"ports"}) is None
    problem = template_problem("{x}{y}", {"ports"})
    assert problem is not None
    assert "unknown variable 'x', 'y'" in problem
    positional = template_problem("{}", {"ports"})
    assert positional is not None
    assert "positional field" in positional
