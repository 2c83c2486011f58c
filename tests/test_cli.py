"""The command line."""

from __future__ import annotations

from typer.testing import CliRunner

import squish_plugin
from squish_plugin.cli import app


def test_info_reports_versions_and_extras():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert f"squish-plugin {squish_plugin.__version__}" in result.output
    assert "torch-pruning" in result.output and "optional nni" in result.output
