"""Template interpolation (docs/protocol.md §6.4): named placeholders only, and errors that say what went wrong."""

from __future__ import annotations

import pytest

from kernel_runner.servicedefs.errors import ServiceStartError, TemplateError
from kernel_runner.servicedefs.legacy import bundled_legacy
from kernel_runner.servicedefs.template import (
    MAX_SPLIT_CHARS,
    interpolate,
    interpolate_argument,
    split_problem,
    split_template,
    template_problem,
)

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


def test_template_problem_names_every_unknown_root() -> None:
    problem = template_problem("{a[0]} {b[key]} {c!r:>7} {{e}} ${{ d }}", {"ports"})
    assert problem is not None and "uses unknown variable 'a', 'b', 'c', 'd';" in problem


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


# --------------------------------------------------------------------------------------------
# The 24.12 language (docs/protocol.md §6.4): ${{ expr }}, shell text, and how both meet {{-escaping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${{ ports[0] }}", "18080"),
        ("${{ports[1]}}", "18081"),
        ("--port=${{  ports[0]  }}", "--port=18080"),
        ("${{ runtime_path }} -m x", "/usr/bin/python3 -m x"),
        ("${{ ref[out] }}", "hello\n"),
        ("${{ ports[0]:>7 }}", "  18080"),
        ("${{ runtime_path!r }}", "'/usr/bin/python3'"),
        ("{ ports[0] }", "18080"),  # upstream strips the spaces inside either form
        ("${{ ports[0] }}{ports[1]}", "1808018081"),
        ("$${{ ports[0] }}", "$18080"),
    ],
)
def test_dollar_placeholders_render_like_brace_placeholders(template: str, expected: str) -> None:
    assert interpolate(template, VARIABLES) == expected


@pytest.mark.parametrize(
    "template",
    [
        "$HOME",
        "${HOME}",
        "${HOME:-/tmp}",
        "${BACKENDAI_KERNEL_ID/aaa/${magic}}",
        "${#arr[@]}",
        "echo $$ ${!ref}",
        "${A:-${B:-${C}}}",
        "${runtime_path}",  # a template variable's name, but written for the shell: the shell's it is
    ],
)
def test_shell_variables_are_left_for_the_shell(template: str) -> None:
    assert interpolate(template, VARIABLES) == template
    assert template_problem(template, set(VARIABLES)) is None


def test_mixed_shell_text_and_both_placeholder_forms() -> None:
    template = 'echo "rt = ${{ runtime_path }}, id = ${KERNEL_ID/aaa/${magic}}, port = {ports[0]}, home = $HOME"'
    assert interpolate(template, VARIABLES) == (
        'echo "rt = /usr/bin/python3, id = ${KERNEL_ID/aaa/${magic}}, port = 18080, home = $HOME"'
    )


def test_a_brace_placeholder_inside_shell_text_still_renders() -> None:
    # As upstream: only the `{` right after `$` belongs to the shell.
    assert interpolate("${PORT:-{ports[1]}}", VARIABLES) == "${PORT:-18081}"
    assert interpolate("${PORT:-${{ ports[1] }}}", VARIABLES) == "${PORT:-18081}"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # Before 24.12, `${{` was `$` plus an escaped brace; where it is no placeholder it still is.
        ("${{HOME}}", "${HOME}"),
        ("${{HOME:-/tmp}}", "${HOME:-/tmp}"),
        ("${{ github.sha }}", "${ github.sha }"),
        ("${{{{ ports[0] }}}}", "${{ ports[0] }}"),  # the way to write a literal `${{ … }}`
        ("{{ports[0]}}", "{ports[0]}"),
        ("{{ ports[0] }}", "{ ports[0] }"),
        ("f() {{ echo; }}; f", "f() { echo; }; f"),
        ("awk '{{print $1}}'", "awk '{print $1}'"),
    ],
)
def test_doubled_braces_stay_literal_next_to_the_new_form(template: str, expected: str) -> None:
    assert interpolate(template, VARIABLES) == expected


def test_a_spaced_dollar_placeholder_of_an_unknown_name_is_a_loud_error() -> None:
    # Written 24.12's way, `${{ name }}` is meant as a placeholder: a typo must not become shell text.
    with pytest.raises(TemplateError) as info:
        interpolate("--port ${{ port[0] }}", VARIABLES)
    assert info.value.reply_text.startswith("KeyError('port'): ")
    assert "a shell variable is $NAME or ${NAME}" in info.value.reply_text
    problem = template_problem("${{ HOME }}", set(VARIABLES))
    assert problem is not None and "uses unknown variable 'HOME'" in problem


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("${{ ports.__class__ }}", "${{ ports.__class__ }}: attribute access is not allowed"),
        ("${{ports.__class__}}", "${{ports.__class__}}: attribute access is not allowed"),
        ("${{ runtime_path.__class__.__mro__ }}", "attribute access is not allowed"),
        ("${{ ports[0][0] }}", "this kind of lookup is not allowed"),
        ("${{ ports[0]:>999999999 }}", "widths of at most 999"),
        ("${{ ports!x }}", "unknown conversion !x"),
    ],
)
def test_the_dollar_form_obeys_the_same_safety_rules(template: str, says: str) -> None:
    with pytest.raises(TemplateError) as info:
        interpolate(template, VARIABLES)
    assert says in info.value.reply_text and "<class" not in info.value.reply_text
    problem = template_problem(template, set(VARIABLES))
    assert problem is not None and says in problem


# Templates written for str.format_map: the bundled legacy rows and every form definitions used before 24.12.
OLD_STYLE = [
    "{ports[0]}", "--port={ports[1]}", "{runtime_path}", "{ref[out]}", "{ports[0]:>7}", "{ports[0]:05d}",
    "{runtime_path!r}", "{runtime_path!s:>20}", "{ports}", "{{literal}}", "{{'ws_ping_interval': 10000}}",
    "c.NotebookApp.port = {ports[0]}\n", "x{{y}}z{ports[0]}", "}}{{", "$HOME/{ports[0]}", "$PATH", "cost: $5",
    "{ref[a b]}", "{none}", "",
]


@pytest.mark.parametrize("template", OLD_STYLE)
def test_templates_of_the_old_language_render_exactly_as_str_format(template: str) -> None:
    variables = {**VARIABLES, "ref": {"out": "hello\n", "a b": "spaced"}}
    assert interpolate(template, variables) == template.format_map(variables)


def test_every_bundled_legacy_template_renders_as_before() -> None:
    table = bundled_legacy()
    variables = {"ports": [8888], "runtime_path": "/opt/python/bin/python3", "jupyter_config": "/tmp/c.py"}
    templates = [
        template
        for row in table.rows
        for template in (
            *row.definition.command,
            *(line for action in row.definition.prestart_actions for line in getattr(action.args, "body", ())),
        )
    ]
    assert len(templates) > 20
    for template in templates:
        assert interpolate(template, variables) == template.format_map(variables)


# --------------------------------------------------------------------------------------------
# A string command without a shell (docs/protocol.md §6.3 `shell`: null or "")
# --------------------------------------------------------------------------------------------


def test_split_template_splits_like_a_shell_and_keeps_values_whole() -> None:
    variables = {**VARIABLES, "ref": {"out": "a b 'c'"}}
    words = split_template("serve --port ${{ ports[0] }} --name 'my model' --msg {ref[out]} \"$HOME\"", variables)
    # The value with spaces and quotes stays one word; no shell runs, so $HOME stays as written.
    assert words == ("serve", "--port", "18080", "--name", "my model", "--msg", "a b 'c'", "$HOME")
    assert split_template("python service.py --flag 'a b'", {}) == ("python", "service.py", "--flag", "a b")
    assert split_template("x=--{ports[0]}-'{ports[1]}'", VARIABLES) == ("x=--18080-18081",)


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("serve 'unclosed", "cannot split the command"),
        ("   ", "has no words to run"),
        ("serve {nope}", "KeyError('nope')"),
        ("serve a\0b", "a NUL character is not allowed"),
    ],
)
def test_split_template_failures(template: str, says: str) -> None:
    with pytest.raises(TemplateError) as info:
        split_template(template, VARIABLES)
    assert says in info.value.reply_text
    problem = split_problem(template, set(VARIABLES))
    assert problem is not None


def test_a_command_split_without_a_shell_has_a_length_limit() -> None:
    # One word may not exceed Linux's argument limit anyway; the limit keeps a megabyte from the wire from costing
    # shlex seconds of CPU (its time grows with the square of a word's length).
    longest = "a" * MAX_SPLIT_CHARS
    assert split_template(longest, {}) == (longest,)
    problem = split_problem(longest + "a", {"ports"})
    assert problem is not None and f"at most {MAX_SPLIT_CHARS} characters" in problem
    with pytest.raises(TemplateError, match="too long to split into words"):
        split_template(longest + "a", VARIABLES)


def test_split_problem_accepts_what_splits() -> None:
    assert split_problem("serve --port ${{ ports[0] }} 'a b'", {"ports"}) is None


# --------------------------------------------------------------------------------------------
# default_arguments (docs/protocol.md §6.6 step 2.4): only a valid placeholder of a known variable renders
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{ports[0]}", "18080"),
        ("--port=${{ ports[1] }}", "--port=18081"),
        ('{"a": 1}', '{"a": 1}'),
        ("{{ports[0]}}", "{{ports[0]}}"),
        ("${{ HOME }} ${HOME} $HOME", "${{ HOME }} ${HOME} $HOME"),
        ("{ports.__class__}", "{ports.__class__}"),
        ("{x} } {", "{x} } {"),
        ('{"port": {ports[0]}}', '{"port": {ports[0]}}'),
    ],
)
def test_interpolate_argument_renders_only_known_placeholders(template: str, expected: str) -> None:
    assert interpolate_argument(template, VARIABLES) == expected
