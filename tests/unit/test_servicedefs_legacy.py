"""The bundled legacy services of docs/protocol.md §6.9, chosen by language when no definition file matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_runner.messages import ServiceInfo, ServiceOptions
from kernel_runner.servicedefs import DefinitionError, Preopened, Refusal, ServiceCatalog, ServiceLaunch, bundled_legacy
from kernel_runner.servicedefs.legacy import parse_legacy_table
from kernel_runner.servicedefs.schema import Mkdir, RestartOverride, WriteTempfile

RT = "/usr/bin/python3"
CHILD_ENV = {"HOME": "/home/work", "PATH": "/usr/bin:/bin"}


def resolve(
    lang: str, name: str, *, work_dir: Path = Path("/home/work"), arguments: dict[str, str] | None = None
) -> ServiceLaunch | Refusal | Preopened:
    catalog = ServiceCatalog()  # no service-defs folder: legacy only
    request = ServiceInfo(name=name, port=18080, ports=(18080,), protocol="http", options=ServiceOptions(arguments=arguments))
    return catalog.resolve(request, lang=lang, runtime_path=RT, child_env=CHILD_ENV, work_dir=work_dir)


def launch(lang: str, name: str, **kwargs: object) -> ServiceLaunch:
    result = resolve(lang, name, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, ServiceLaunch), result
    assert result.origin == "legacy"
    return result


def test_bundled_table_loads_and_covers_the_spec_rows() -> None:
    table = bundled_legacy()
    assert table.langs() == {"python", "julia", "r", "vendor.h2o"}
    for lang, name in [
        ("python", "jupyter"),
        ("python", "jupyterlab"),
        ("python", "ipython"),
        ("python", "digits"),
        ("python", "tensorboard"),
        ("python", "spectravis"),
        ("python", "sftp"),
        ("julia", "jupyter"),
        ("r", "jupyterlab"),
        ("vendor.h2o", "jupyter"),
        ("vendor.h2o", "sftp"),
        ("vendor.h2o", "my-h2o-flow"),
    ]:
        row = table.find(lang, name)
        assert row is not None, (lang, name)
        assert row.note, "every bundled row says where it comes from"


@pytest.mark.parametrize(
    ("lang", "name"), [("python", "node"), ("nodejs", "node"), ("app", "jupyter"), ("c", "jupyter"), ("python", "h2o")]
)
def test_names_a_runner_does_not_offer_are_unsupported(lang: str, name: str) -> None:
    assert resolve(lang, name) == Refusal("unsupported service")


def test_python_jupyter_writes_a_config_and_runs_notebook(tmp_path: Path) -> None:
    result = launch("python", "jupyter", work_dir=tmp_path)
    assert isinstance(result.prestart[0], WriteTempfile)
    command = result.prepare(log=lambda level, text: None)
    config = Path(command.argv[-1])
    try:
        assert command.argv == (RT, "-m", "notebook", "--no-browser", "--config", str(config))
        text = config.read_text()
        assert "c.NotebookApp.port = 18080\n" in text
        assert "c.NotebookApp.allow_root = True\n" in text
        assert "c.NotebookApp.token = ''\n" in text
        assert "c.FileContentsManager.delete_to_trash = False\n" in text
        assert "{'ws_ping_interval': 10000}" in text
        assert config.suffix == ".py"
    finally:
        config.unlink()


def test_jupyterlab_and_h2o_share_the_python_rows() -> None:
    assert launch("python", "jupyterlab").command[:3] == ("{runtime_path}", "-m", "jupyterlab")
    assert launch("vendor.h2o", "jupyter").command[:3] == ("{runtime_path}", "-m", "notebook")


def test_julia_and_r_use_the_jupyter_on_path_without_the_ping_setting(tmp_path: Path) -> None:
    result = launch("julia", "jupyterlab", work_dir=tmp_path)
    command = result.prepare(log=lambda level, text: None)
    config = Path(command.argv[-1])
    try:
        assert command.argv[:3] == ("jupyter", "lab", "--no-browser")
        assert "ws_ping_interval" not in config.read_text()
    finally:
        config.unlink()
    assert launch("r", "jupyter").command[:2] == ("jupyter", "notebook")


def test_tensorboard_makes_its_log_folder_first() -> None:
    result = launch("python", "tensorboard")
    (action,) = result.prestart
    assert isinstance(action, Mkdir)
    assert action.args.path == "/home/work/logs"
    assert result.render().argv == (
        *(RT, "-m", "tensorboard.main", "--logdir", "/home/work/logs"),
        *("--host", "0.0.0.0", "--port", "18080", "--debugger_port", "6064"),
    )


def test_spectravis_runs_in_its_folder_on_the_requested_port() -> None:
    result = launch("python", "spectravis")
    command = result.render()
    assert command.cwd == Path("/home/work/spectravis")
    assert command.argv == (RT, "-m", "http.server", "18080")


def test_sftp_and_digits() -> None:
    assert launch("vendor.h2o", "sftp").render().argv == (RT, "-m", "sftpserver", "--port", "18080")
    assert launch("python", "digits").render().argv == (RT, "-m", "digits")


def test_ipython_waits_for_no_port_and_is_not_restarted() -> None:
    result = launch("python", "ipython")
    assert result.port is None
    assert result.restart == RestartOverride(policy="temporary")
    assert result.render().argv == (RT, "-m", "IPython")


def test_h2o_names_are_a_noop() -> None:
    result = launch("vendor.h2o", "my-h2o-flow")
    assert result.noop
    assert result.prepare(log=lambda level, text: None).argv == ()


def test_legacy_commands_ignore_user_options_as_upstream() -> None:
    result = launch("python", "sftp", arguments={"--anything": "1"})
    assert result.arguments == ()


def test_bad_legacy_rows_are_rejected_with_paths() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_legacy_table([{"langs": ["python"], "definition": {"command": ["{nope}"]}}], source="t.json")
    assert info.value.problems[0].endswith("@ $[0].definition.command[0]")
    with pytest.raises(DefinitionError) as extra:
        parse_legacy_table([{"langs": ["python"], "definition": {"command": ["x"]}, "color": 1}], source="t.json")
    assert "unknown key 'color'" in extra.value.problems[0]


def test_every_bundled_template_renders_as_str_format_map_did() -> None:
    """Named placeholders only (docs/protocol.md §6.4) changed nothing for the bundled rows."""
    from kernel_runner.servicedefs.schema import _action_templates
    from kernel_runner.servicedefs.template import interpolate

    variables = {"ports": [18080, 18081], "runtime_path": RT, "jupyter_config": "/tmp/tmpab12cd34.py"}
    templates: list[str] = []
    for row in bundled_legacy().rows:
        templates += row.definition.command
        templates += [part for item in row.definition.env.items() for part in item]
        for action in row.definition.prestart_actions:
            templates += [template for template, _path in _action_templates(action)]
    assert any("{ports[0]}" in template for template in templates)
    for template in templates:
        assert interpolate(template, variables) == template.format_map(variables), template
