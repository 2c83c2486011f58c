"""The ``squish-plugin`` command line: thin typer commands over the library."""

from __future__ import annotations

import contextlib
import importlib.util
import platform
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from .errors import SquishError

T = TypeVar("T")

app = typer.Typer(
    name="squish-plugin",
    help="Evolutionary synthesis (SquishedNets) for PyTorch CNNs.",
    no_args_is_help=True,
    add_completion=False,
)

#: optional module -> how to get it
OPTIONAL = {
    "nni": "pip install 'squish-plugin[nni]'",
    "onnx": "pip install 'squish-plugin[export]'",
    "onnxsim": "pip install 'squish-plugin[export]'",
    "onnxruntime": "pip install 'squish-plugin[export]'",
    "tensorrt": "NVIDIA's tensorrt wheel on a GPU host, or JetPack on a Jetson",
}


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
    for module, hint in OPTIONAL.items():
        present = importlib.util.find_spec(module) is not None
        state = _version(module) if present else f"absent ({hint})"
        typer.echo(f"optional {module}: {state}")


def _guard(action: Callable[[], T], resume_hint: Path | None = None) -> T:
    """Run ``action``; a library error becomes one line on stderr and exit code 2."""
    try:
        return action()
    except SquishError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        hint = f"; resume with: squish-plugin run --resume {resume_hint}" if resume_hint else ""
        typer.echo(f"interrupted{hint}", err=True)
        raise typer.Exit(130) from None


@app.command()
def run(
    recipe: Annotated[Path | None, typer.Argument(help="YAML recipe, e.g. examples/quickstart.yaml")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a recipe key: a.b=value")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and print the resolved recipe only")] = False,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in this directory")] = None,
) -> None:
    """Run a SquishedNets study: ancestor -> generations -> lineage -> report."""
    import yaml

    from .recipe import load_recipe
    from .study import check_data, new_run_dir, read_run_recipe, run_study

    if (recipe is None) == (resume is None):
        typer.echo("error: give either a recipe file or --resume RUN_DIR, not both or neither.", err=True)
        raise typer.Exit(2)
    if resume is not None and dry_run:
        typer.echo("error: --resume continues a run as it was recorded; --dry-run does not apply.", err=True)
        raise typer.Exit(2)
    other = [item for item in set_ or [] if item.partition("=")[0].strip() != "evolution.generations"]
    if resume is not None and other:
        typer.echo(
            f"error: --resume continues a run as it was recorded; only --set evolution.generations=N "
            f"(to extend a run) applies, not '{other[0]}'.",
            err=True,
        )
        raise typer.Exit(2)
    if resume is not None:
        resolved = _guard(lambda: read_run_recipe(resume, set_ or []))
        with _process_group(resolved.train.device):
            _guard(lambda: run_study(resolved, run_dir=resume, resume=True), resume_hint=resume)
        return
    resolved = _guard(lambda: load_recipe(recipe, set_ or []))
    if dry_run:
        _guard(lambda: check_data(resolved))
        typer.echo(yaml.safe_dump(resolved.model_dump(), sort_keys=False).rstrip())
        typer.echo("dry run: recipe valid, nothing trained or written.")
        return
    with _process_group(resolved.train.device):
        from . import distributed

        run_dir = distributed.broadcast_object(new_run_dir(resolved))  # one name for every rank
        _guard(lambda: run_study(resolved, run_dir=run_dir), resume_hint=run_dir)


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[None]:
    """Under torchrun (``WORLD_SIZE`` > 1): join the process group for the command, leave it after."""
    from . import distributed

    _guard(lambda: distributed.setup(device))
    try:
        yield
    finally:
        distributed.shutdown()


@app.command()
def compare(
    recipe: Annotated[Path, typer.Argument(help="comparison recipe, e.g. examples/compare.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a recipe key: a.b=value")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue a comparison in this directory")] = None,
) -> None:
    """Classic pruners (NNI L1/L2/FPGM/Taylor, torch-pruning magnitude/random) on a run's schedule."""
    from .comparison import run_comparison
    from .recipe import load_compare_recipe

    resolved = _guard(lambda: load_compare_recipe(recipe, set_ or []))
    _guard(lambda: run_comparison(resolved, out_dir=resume), resume_hint=None)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory of `squish-plugin run`")],
    opset: Annotated[int, typer.Option(help="ONNX opset (<= 13 for TensorRT 8.2 on the Jetson TX1)")] = 13,
    batch: Annotated[int | None, typer.Option(help="fixed batch size; default: dynamic batch")] = None,
    size: Annotated[int, typer.Option(help="input height and width")] = 224,
) -> None:
    """Export the ancestor and every SquishedNet of a run to ONNX (+ onnxsim), checked."""
    from .deploy.runs import export_run

    manifest = _guard(lambda: export_run(run_dir, opset=opset, batch=batch, size=size))
    for name, info in manifest["models"].items():
        unsupported = ", ".join(info["unsupported_ops"]) or "none"
        typer.echo(f"{name:15s} {info['path']}  max|diff| {info['max_abs_diff']:.1e}  ops unsupported by TensorRT 8.2: {unsupported}")


@app.command(context_settings={"allow_extra_args": False})
def bench(
    target: Annotated[list[str], typer.Argument(help="RUN_DIR, or: kit RUN_DIR --out DIR, or: collect RESULTS_DIR --into RUN_DIR")],
    backend: Annotated[str, typer.Option(help="pytorch | onnxruntime | tensorrt | trtexec")] = "onnxruntime",
    batch: Annotated[int, typer.Option(help="images per batch")] = 32,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 (tensorrt, trtexec)")] = "fp32",
    threads: Annotated[int, typer.Option(help="CPU threads (pytorch, onnxruntime)")] = 2,
    warmup: Annotated[int, typer.Option(help="untimed batches first")] = 3,
    runs: Annotated[int, typer.Option(help="timed batches (per round)")] = 10,
    rounds: Annotated[int, typer.Option(help="interleaved rounds over the models (pytorch, onnxruntime)")] = 1,
    trtexec: Annotated[str | None, typer.Option(help="path to trtexec")] = None,
    out: Annotated[Path | None, typer.Option(help="kit: where to write the Jetson kit")] = None,
    into: Annotated[Path | None, typer.Option(help="collect: the run directory to fill")] = None,
) -> None:
    """Throughput of a run's exported models; `bench kit` builds the Jetson TX1 kit,
    `bench collect` brings the device's results into the run's report."""
    from .deploy import runs as deploy

    verb, args = (target[0], target[1:]) if target[0] in ("kit", "collect") else ("run", target)
    if len(args) != 1:
        typer.echo("error: give exactly one directory (see squish-plugin bench --help).", err=True)
        raise typer.Exit(2)
    if verb == "kit":
        if out is None:
            typer.echo("error: bench kit needs --out DIR.", err=True)
            raise typer.Exit(2)
        path = _guard(lambda: deploy.kit_for_run(args[0], out, batch=batch))
        typer.echo(f"Jetson kit written to {path}; see {path / 'README.md'}")
    elif verb == "collect":
        if into is None:
            typer.echo("error: bench collect needs --into RUN_DIR.", err=True)
            raise typer.Exit(2)
        results = _guard(lambda: deploy.collect_into_run(args[0], into))
        typer.echo(f"{len(results)} results collected; report: {into / 'report.md'}")
    else:
        results = _guard(lambda: deploy.bench_run(args[0], backend=backend, batch=batch, precision=precision,
                                                  threads=threads, warmup=warmup, runs=runs, trtexec=trtexec,
                                                  rounds=rounds))  # fmt: skip
        for r in results:
            typer.echo(f"{r['model']:15s} {r['images_per_second']:8.1f} img/s  median {r['latency_ms']['median']:.1f} ms/batch"
                       f"  p90 {r['latency_ms']['p90']:.1f}  ({r['backend']} {r['precision']}, batch {r['batch']})")  # fmt: skip


data_app = typer.Typer(help="Build datasets for the study.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("imagenet10")
def data_imagenet10(
    imagenet_root: Annotated[Path, typer.Option("--imagenet-root", help="local ILSVRC-2012 with train/ and val/")],
    out: Annotated[Path, typer.Option("--out", help="where to write train/ and val/ of ImageNet-10")],
    cellphone: Annotated[str, typer.Option(help="wnid for the paper's 'cell phone': n03584254 (as listed; ILSVRC's iPod) or n02992529 (cellular telephone)")] = "n03584254",
    copy: Annotated[bool, typer.Option("--copy", help="copy files instead of symlinking")] = False,
    ground_truth: Annotated[Path | None, typer.Option(help="labels for a flat val/ folder")] = None,
) -> None:
    """Build the paper's ImageNet-10 subset from a local ILSVRC-2012 (links, not copies)."""
    from .data import build_imagenet10

    typer.echo(
        "note: the paper lists n03584254 for 'cell phone'; in ILSVRC-2012 that wnid is 'iPod', "
        "while 'cellular telephone' is n02992529 (choose with --cellphone)."
    )
    counts = _guard(
        lambda: build_imagenet10(
            imagenet_root, out, cellphone=cellphone, link=not copy, devkit_ground_truth=ground_truth
        )
    )
    typer.echo(f"ImageNet-10 written to {out}: {counts}")


@app.callback()
def _root() -> None:
    """Evolutionary synthesis (SquishedNets) for PyTorch CNNs."""


def main() -> None:
    app()
