"""Template interpolation (docs/protocol.md §6.4): format_map rules, and errors that say what went wrong."""

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


def test_template_names_finds_roots_including_nested_specs() -> None:
    assert template_names("{a[0]} {b.c} {d:{width}} {{e}}") == {"a", "b", "d", "width"}


def test_template_problem() -> None:
    assert template_problem("{ports[0]}", {"ports"}) is None
    problem = template_problem("{x}{y}", {"ports"})
    assert problem is not None
    assert "unknown variable 'x', 'y'" in problem
    positional = template_problem("{}", {"ports"})
    assert positional is not None
    assert "positional field" in positional
