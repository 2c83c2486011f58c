"""The ``squish-plugin`` command line: thin typer commands over the library."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import platform
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from .errors import SquishError

#: what a command that can be cut short tells the user to run to resume it
_RESUME_HINT: contextvars.ContextVar[str | None] = contextvars.ContextVar("resume_hint", default=None)


class _Commands(TyperGroup):
    """The one error handler of every command: a library error (:class:`SquishError`) becomes
    one line on stderr and exit code 2; Ctrl-C exits 130 with the command's resume hint."""

    def invoke(self, ctx: Any) -> Any:
        token = _RESUME_HINT.set(None)
        try:
            return super().invoke(ctx)
        except SquishError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            hint = _RESUME_HINT.get()
            typer.echo("interrupted" + (f"; resume with: {hint}" if hint else ""), err=True)
            raise typer.Exit(130) from None
        finally:
            _RESUME_HINT.reset(token)


app = typer.Typer(
    cls=_Commands,
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
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a recipe key: a.b=value")]


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


def _fail(message: str) -> NoReturn:
    """A wrong combination of arguments: one line on stderr, exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[None]:
    """Under torchrun (``WORLD_SIZE`` > 1): join the process group for the command, leave it after."""
    from .study import distributed

    distributed.setup(device)
    try:
        yield
    finally:
        distributed.shutdown()


def _study(recipe, run_dir: Path | None) -> None:
    """Run (``run_dir`` None: a new run directory) or resume a study under torchrun or alone."""
    from .study import distributed, runner

    with _process_group(recipe.train.device):
        resume = run_dir is not None
        run_dir = run_dir or distributed.broadcast_object(runner.new_run_dir(recipe))  # one name for every rank
        _RESUME_HINT.set(f"squish-plugin run --resume {run_dir}")
        runner.run_study(recipe, run_dir=run_dir, resume=resume)


@app.command()
def run(
    recipe: Annotated[Path | None, typer.Argument(help="YAML recipe, e.g. examples/quickstart.yaml")] = None,
    set_: SetOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and print the resolved recipe only")] = False,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in this directory")] = None,
) -> None:
    """Run a SquishedNets study: ancestor -> generations -> lineage -> report."""
    import yaml

    from .study import runner
    from .study.recipe import load_recipe

    if (recipe is None) == (resume is None):
        _fail("give either a recipe file or --resume RUN_DIR, not both or neither.")
    if resume is not None and dry_run:
        _fail("--resume continues a run as it was recorded; --dry-run does not apply.")
    if resume is not None:
        _study(runner.read_run_recipe(resume, set_ or []), resume)
        return
    resolved = load_recipe(recipe, set_ or [])
    if dry_run:  # the recipe is checked; data that lives elsewhere (another machine) only warns
        typer.echo(yaml.safe_dump(resolved.model_dump(), sort_keys=False).rstrip())
        for problem in runner.data_problems(resolved):
            typer.echo(f"warning: {problem}", err=True)
        for problem in runner.fit_problems(resolved):
            _fail(problem)
        for warning in runner.size_warnings(resolved):
            typer.echo(f"warning: {warning}", err=True)
        typer.echo("dry run: recipe valid, nothing trained or written.")
        return
    _study(resolved, None)


@app.command()
def finish(
    run_dir: Annotated[Path, typer.Argument(help="a run directory of `squish-plugin run`")],
    set_: SetOption = None,
) -> None:
    """Finish a run's named networks (SquishedNet-1..k, squishednets.extra_params): a long
    fine-tune with distillation from the ancestor, resumable per epoch; the report shows both."""
    from .study import runner

    _RESUME_HINT.set(f"squish-plugin finish {run_dir}")
    runner.finish_study(run_dir, set_ or [])


@app.command()
def compare(
    recipe: Annotated[Path, typer.Argument(help="comparison recipe, e.g. examples/compare.yaml")],
    set_: SetOption = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue a comparison in this directory")] = None,
) -> None:
    """Classic pruners (NNI L1/L2/FPGM/Taylor, torch-pruning magnitude/random) on a run's schedule."""
    from .baselines.protocol import run_comparison
    from .baselines.recipe import load_compare_recipe

    resolved = load_compare_recipe(recipe, set_ or [])
    run_comparison(resolved, out_dir=resume)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory of `squish-plugin run`")],
    opset: Annotated[int, typer.Option(help="ONNX opset (<= 13 for TensorRT 8.2 on the Jetson TX1)")] = 13,
    batch: Annotated[int | None, typer.Option(help="fixed batch size; default: dynamic batch")] = None,
    size: Annotated[int, typer.Option(help="input height and width")] = 224,
) -> None:
    """Export the ancestor and every SquishedNet of a run to ONNX (+ onnxsim), checked."""
    from .study.deployment import export_run

    manifest = export_run(run_dir, opset=opset, batch=batch, size=size)
    for name, info in manifest["models"].items():
        unsupported = ", ".join(info["unsupported_ops"]) or "none"
        diff = info["max_abs_diff"]
        typer.echo(f"{name:15s} {info['path']}  max|diff| {diff:.1e}  ops unsupported by TensorRT 8.2: {unsupported}")


class _DefaultRun(TyperGroup):
    """``bench RUN_DIR ...`` means ``bench run RUN_DIR ...``: the sub-verbs ``kit`` and
    ``collect`` are named, measuring a run is the default."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    cls=_DefaultRun,
    no_args_is_help=True,
    help="Throughput of a run's exported models (`bench RUN_DIR`); `bench kit` builds the Jetson TX1 kit, "
    "`bench collect` brings the device's results into the run's report.",
)
app.add_typer(bench_app, name="bench")


@bench_app.command("run")
def bench_run(
    run_dir: Annotated[Path, typer.Argument(help="a run directory with exported models")],
    backend: Annotated[str, typer.Option(help="pytorch | onnxruntime | tensorrt | trtexec")] = "onnxruntime",
    batch: Annotated[int, typer.Option(help="images per batch")] = 32,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 (tensorrt, trtexec)")] = "fp32",
    threads: Annotated[int, typer.Option(help="CPU threads (pytorch, onnxruntime)")] = 2,
    warmup: Annotated[int, typer.Option(help="untimed batches first")] = 3,
    runs: Annotated[int, typer.Option(help="timed batches (per round)")] = 10,
    rounds: Annotated[int, typer.Option(help="interleaved rounds over the models (pytorch, onnxruntime)")] = 1,
    trtexec: Annotated[str | None, typer.Option(help="path to trtexec")] = None,
) -> None:
    """Measure the throughput of a run's exported models with one backend."""
    from .study import deployment as deploy

    options = {"backend": backend, "batch": batch, "precision": precision, "threads": threads, "warmup": warmup}
    results = deploy.bench_run(run_dir, **options, runs=runs, trtexec=trtexec, rounds=rounds)
    load = results[0]["env"]["machine_load"] if results else {}
    if load.get("busy"):
        typer.echo(
            f"warning: the machine was busy (other processes held {load['other_processes_cores']} of "
            f"{load['cores']} cores on average; load {load['load_1min_before']} before): these figures are not "
            "an idle machine's; measure again with nothing else running.",
            err=True,
        )
    for r in results:
        lat = r["latency_ms"]
        typer.echo(
            f"{r['model']:15s} {r['images_per_second']:8.1f} img/s  median {lat['median']:.1f} ms/batch"
            f"  p90 {lat['p90']:.1f}  ({r['backend']} {r['precision']}, batch {r['batch']})"
        )


@bench_app.command("table")
def bench_table(
    recipe: Annotated[Path, typer.Argument(help="a recipe with resource: latency or round_to: auto")],
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="measure again even if the table file exists")] = False,
) -> None:
    """Measure the per-layer latency table (and round_to: auto) a recipe reads, on its backend."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .study.latency import ensure_table
    from .study.recipe import load_recipe

    resolved = load_recipe(recipe, set_ or [])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        stages: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in stages:
                stages[stage] = bar.add_task(stage, total=total)
            bar.update(stages[stage], completed=done, total=total)

        path = ensure_table(
            resolved, echo=lambda line: bar.console.print(line, markup=False), force=force, progress=progress
        )
    if path is None:
        _fail("the recipe reads no latency table: set evolution.resource: latency or evolution.round_to: auto.")
    typer.echo(f"latency table: {path}")


@bench_app.command("kit")
def bench_kit(
    run_dir: Annotated[Path, typer.Argument(help="a run directory with exported models")],
    out: Annotated[Path, typer.Option(help="where to write the Jetson kit")],
    batch: Annotated[int, typer.Option(help="images per batch")] = 32,
    latency: Annotated[bool, typer.Option("--latency", help="also measure a latency table on the device")] = False,
) -> None:
    """Build the Jetson TX1 kit: the run's ONNX models, a benchmark script, a README."""
    from .study import deployment as deploy

    path = deploy.kit_for_run(run_dir, out, batch=batch, latency=latency)
    typer.echo(f"Jetson kit written to {path}; see {path / 'README.md'}")


@bench_app.command("collect")
def bench_collect(
    results_dir: Annotated[Path, typer.Argument(help="the kit's results folder, brought back from the device")],
    into: Annotated[Path | None, typer.Option(help="the run directory to fill")] = None,
    latency_table: Annotated[
        Path | None, typer.Option("--latency-table", help="write the latency table of a --latency kit here")
    ] = None,
    precision: Annotated[str, typer.Option(help="the latency table's precision: fp32 | fp16")] = "fp16",
) -> None:
    """Bring the device's results into the run's report (and/or its latency table into a file)."""
    from .study import deployment as deploy

    if into is None and latency_table is None:
        _fail("bench collect needs --into RUN_DIR and/or --latency-table FILE.")
    if latency_table is not None:
        from .deploy.latency.kit import table_from_results
        from .persistence import write_json_atomic

        if precision not in ("fp32", "fp16"):
            _fail(f"--precision must be fp32 or fp16, got {precision!r}.")
        table = table_from_results(results_dir, precision)
        write_json_atomic(latency_table, table.to_dict())
        typer.echo(
            f"latency table: {latency_table} (round_to {table.round_to}; use it with "
            f"--set evolution.latency.backend=file --set evolution.latency.table={latency_table})"
        )
    if into is not None:
        results = deploy.collect_into_run(results_dir, into)
        typer.echo(f"{len(results)} results collected; report: {into / 'report.md'}")


data_app = typer.Typer(help="Build datasets for the study.", no_args_is_help=True)
app.add_typer(data_app, name="data")

CELLPHONE_HELP = (
    "wnid for the paper's 'cell phone': n03584254 (as listed; ILSVRC's iPod) or n02992529 (cellular telephone)"
)


@data_app.command("imagenet10")
def data_imagenet10(
    imagenet_root: Annotated[Path, typer.Option("--imagenet-root", help="local ILSVRC-2012 with train/ and val/")],
    out: Annotated[Path, typer.Option("--out", help="where to write train/ and val/ of ImageNet-10")],
    cellphone: Annotated[str, typer.Option(help=CELLPHONE_HELP)] = "n03584254",
    copy: Annotated[bool, typer.Option("--copy", help="copy files instead of symlinking")] = False,
    ground_truth: Annotated[Path | None, typer.Option(help="labels for a flat val/ folder")] = None,
) -> None:
    """Build the paper's ImageNet-10 subset from a local ILSVRC-2012 (links, not copies)."""
    from .study.imagenet10 import build_imagenet10

    typer.echo(
        "note: the paper lists n03584254 for 'cell phone'; in ILSVRC-2012 that wnid is 'iPod', "
        "while 'cellular telephone' is n02992529 (choose with --cellphone)."
    )
    options = {"cellphone": cellphone, "link": not copy, "devkit_ground_truth": ground_truth}
    counts = build_imagenet10(imagenet_root, out, **options)
    typer.echo(f"ImageNet-10 written to {out}: {counts}")


@app.callback()
def _root() -> None:
    """Evolutionary synthesis (SquishedNets) for PyTorch CNNs."""


def main() -> None:
    app()
