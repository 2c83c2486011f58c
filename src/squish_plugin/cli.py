"""The ``squish-plugin`` command line: thin typer commands over the library."""

from __future__ import annotations

import importlib.util
import platform
from importlib.metadata import PackageNotFoundError, version

import typer

app = typer.Typer(
    name="squish-plugin",
    help="Evolutionary synthesis (SquishedNets) for PyTorch CNNs.",
    no_args_is_help=True,
    add_completion=False,
)

OPTIONAL = {"nni": "nni"}


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@app.command()
def info() -> None:
    """Print squish-plugin's version, its dependencies and which extras are present."""
    typer.echo(f"squish-plugin {_version('squish-plugin')}")
    typer.echo(f"python {platform.python_version()}")
    for dist in ("torch", "torchvision", "torch-pruning", "typer"):
        typer.echo(f"{dist} {_version(dist)}")
    for module, extra in OPTIONAL.items():
        present = importlib.util.find_spec(module) is not None
        state = _version(module) if present else f"absent (pip install 'squish-plugin[{extra}]')"
        typer.echo(f"optional {module}: {state}")


@app.callback()
def _root() -> None:
    """Evolutionary synthesis (SquishedNets) for PyTorch CNNs."""


def main() -> None:
    app()
