"""intrinsic-ports.json and port precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_runner.config import ConfigError, RunnerConfig, read_intrinsic_ports, resolve_ports


def test_missing_ports_file_means_defaults(tmp_path: Path) -> None:
    config = resolve_ports(RunnerConfig(lang="app"), read_intrinsic_ports(tmp_path / "nope.json"))
    assert (config.port_in, config.port_out, config.sshd_port, config.ttyd_port) == (2000, 2001, 2200, 7681)


def test_ports_file_overrides_defaults_and_cli_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "intrinsic-ports.json"
    path.write_text('{"replin": 3000, "replout": 3001, "sshd": 3022}')
    file_ports = read_intrinsic_ports(path)
    config = resolve_ports(RunnerConfig(lang="app", port_out=4001), file_ports)
    assert (config.port_in, config.port_out, config.sshd_port, config.ttyd_port) == (3000, 4001, 3022, 7681)


@pytest.mark.parametrize("text", ["{oops", "[]", '{"replin": "x"}', '{"replin": 70000}', '{"sshd": true}'])
def test_bad_ports_file_is_a_config_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "intrinsic-ports.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"intrinsic-ports\.json"):
        read_intrinsic_ports(path)
