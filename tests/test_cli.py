"""Every `stowplan` subcommand loads and answers --help (catches broken lazy imports)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from stowplan import cli

COMMANDS = [[name] for name in cli.COMMANDS] + [["bench", name] for name in cli.BENCHMARKS]


def test_top_level_help_lists_every_command():
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for name in [*cli.COMMANDS, "bench"]:
        assert name in result.output


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_subcommand_help(argv):
    result = CliRunner().invoke(cli.main, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
