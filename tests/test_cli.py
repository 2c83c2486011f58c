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


def test_one_handler_turns_library_errors_into_exit_2_and_ctrl_c_into_a_resume_hint():
    """Every command runs under the group's one handler (no per-call wrappers): a SquishError is
    one line on stderr with exit code 2, Ctrl-C exits 130 naming the command's resume hint, and a
    hint set by one command does not leak into the next."""
    import typer

    from squish_plugin import cli
    from squish_plugin.errors import InvalidArgumentError

    demo = typer.Typer(cls=cli._Commands)

    @demo.command()
    def fails() -> None:
        raise InvalidArgumentError("the thing is wrong; use the other thing.")

    @demo.command()
    def cut(hint: bool = True) -> None:
        if hint:
            cli._RESUME_HINT.set("squish-plugin run --resume R")
        raise KeyboardInterrupt

    runner = CliRunner()
    result = runner.invoke(demo, ["fails"])
    assert result.exit_code == 2 and result.output.strip() == "error: the thing is wrong; use the other thing."
    result = runner.invoke(demo, ["cut"])
    assert result.exit_code == 130 and "interrupted; resume with: squish-plugin run --resume R" in result.output
    result = runner.invoke(demo, ["cut", "--no-hint"])
    assert result.exit_code == 130 and result.output.strip() == "interrupted"
    assert cli.app.info.cls is cli._Commands and "_guard" not in vars(cli)
