"""The command line: every subcommand is listed and has working help; user mistakes are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deepultrasound.capabilities import capabilities
from deepultrasound.cli import main

COMMANDS = capabilities().commands


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name in COMMANDS:
        assert name in listed


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"deepultrasound {name}" in capsys.readouterr().out


def test_unknown_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["strian"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'strian'" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command():
    done = subprocess.run(
        [sys.executable, "-m", "deepultrasound", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.startswith("deepultrasound ")


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"deepultrasound train: error: config file not found: {tmp_path / 'missing.yaml'}"
    ]
