"""The study: a recipe in, a run directory with lineage, checkpoints and report out.

Example:
    >>> from squish_plugin.study.recipe import load_recipe
    >>> from squish_plugin.study.runner import run_study
    >>> run_dir = run_study(load_recipe("examples/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import torch
from rich.console import Console

from ..errors import InvalidArgumentError
from ..persistence import load_pruned
from ..synthesis.genetics import SynthesisConfig
from ..synthesis.surgery import model_stats
from ..threads import torch_threads
from . import distributed
from .ancestor import recipe_ancestor
from .checks import (
    ancestor_lr,
    check_data,
    data_problems,
    fit_problems,
    resolution_warning,
    size_warnings,
)
from .data import LoadedSplit, load_split
from .engine import LINEAGE_FILE, EvolutionConfig, GenerationContext, evolve, read_lineage
from .finish_run import finish_networks, finished_sections, read_finished
from .holdout import proxy_slice
from .latency import TableTimers, resolved_round_to, run_table
from .progress import StudyDisplay
from .recipe import Recipe
from .report import select_squishednets, write_report
from .rundir import (
    finish_recipe,
    new_run_dir,
    open_run_dir,
    read_run_recipe,
    record_recipe,
    timestamped_dir,
)
from .runlock import run_lock
from .selection import checked_ancestor, data_importance, held_out, screen_by_finetune
from .training import TrainSettings, check_precision, evaluate, mean_kl, train

__all__ = [
    "check_data",
    "data_problems",
    "fit_problems",
    "size_warnings",
    "finish_recipe",
    "finish_study",
    "load_data",
    "new_run_dir",
    "read_lineage",
    "read_run_recipe",
    "rewrite_report",
    "run_study",
    "squishednet_models",
    "timestamped_dir",
    "train_settings",
]

THROUGHPUT_FILE = "throughput.json"


def train_settings(recipe: Recipe) -> TrainSettings:
    """The optimiser and schedule a recipe's ``train`` section describes."""
    t = recipe.train
    same = {f.name: getattr(t, f.name) for f in fields(TrainSettings) if f.name in type(t).model_fields}
    distill = {"distill_alpha": t.distill.alpha, "distill_temperature": t.distill.temperature}
    return TrainSettings(**same, **distill, crop=recipe.data.train_crop)


class Teacher:
    """The distillation teacher of a recipe: the trained ancestor (loaded once from the
    run's ``gen_00`` checkpoint, so a resumed run finds it too) or each parent."""

    def __init__(self, kind: str, run_dir: Path) -> None:
        self.kind, self.run_dir, self._ancestor = kind, Path(run_dir), None

    def __call__(self, ctx: GenerationContext) -> torch.nn.Module | None:
        if self.kind == "none" or ctx.generation == 0:
            return None
        if self.kind == "parent":
            return ctx.parent
        return self.ancestor()

    def ancestor(self) -> torch.nn.Module:
        """The run's trained ancestor (generation 0), loaded once."""
        if self._ancestor is None:
            self._ancestor = load_pruned(self.run_dir / "checkpoints" / "gen_00.pt")
        return self._ancestor


def load_data(recipe: Recipe) -> tuple[LoadedSplit, LoadedSplit]:
    """The recipe's training and validation splits, decoded (and cached) once."""
    d = recipe.data
    check_precision(recipe.train.precision, distributed.device_for(recipe.train.device))
    check_data(recipe)
    if not distributed.is_main():
        distributed.barrier()  # rank 0 decodes (and caches) first; the others then read its cache
    train_split = load_split(d.root, d.train_split, d.train_size, classes=d.classes, cache_dir=d.cache_dir, train=True)
    val_split = load_split(
        d.root, d.val_split, d.eval_size, classes=list(train_split.classes), cache_dir=d.cache_dir, train=False
    )
    if distributed.is_main():
        distributed.barrier()
    return train_split, val_split


def _scorer(recipe: Recipe, split: LoadedSplit) -> Callable[[torch.nn.Module], dict[str, float]]:
    t = recipe.train
    return lambda model: evaluate(
        model, split, batch_size=t.eval_batch_size, channels_last=t.channels_last, device=t.device
    )


def fitness_of(recipe: Recipe, split: LoadedSplit, teacher: Teacher) -> Callable[[torch.nn.Module], float]:
    """Selection's fitness on ``split`` (held-out images): top-1 (``evolution.fitness: top1``),
    or minus the mean KL divergence from the ancestor's outputs (``kl``: less noisy on a few
    hundred images, as DarwinLM's)."""
    t = recipe.train
    if recipe.evolution.fitness == "kl":
        return lambda model: (
            -mean_kl(
                model,
                teacher.ancestor(),
                split,
                batch_size=t.eval_batch_size,
                channels_last=t.channels_last,
                device=t.device,
            )
        )
    score = _scorer(recipe, split)
    return lambda model: score(model)["top1"]


def evolution_config(
    recipe: Recipe, proxy_fn, on_generation=None, *, screen_fn=None, importance=None, latency_table=None
) -> EvolutionConfig:
    """The engine's settings from a recipe's ``evolution`` section; ``proxy_fn`` scores
    offspring on the held-out slice (or a fixed slice of training images; selection
    never sees val); ``screen_fn`` is ``selection: finetune``'s short fine-tune and score;
    ``latency_table`` the run's table (``resource: latency``, ``round_to: auto``)."""
    evo, size = recipe.evolution, recipe.data.eval_size
    settings = {f.name: getattr(evo, f.name) for f in fields(SynthesisConfig)}
    synthesis = SynthesisConfig(**{**settings, "round_to": resolved_round_to(recipe, latency_table)})
    several = evo.offspring_per_generation > 1
    if evo.selection == "proxy":
        screen_fn = proxy_fn
    elif evo.selection != "finetune" or not several:
        screen_fn = None
    return EvolutionConfig(
        generations=evo.generations,
        synthesis=synthesis,
        offspring_per_generation=evo.offspring_per_generation,
        fitness_fn=proxy_fn if evo.selection == "trained" and several else None,
        screen_fn=screen_fn,
        importance=importance or evo.importance,
        reinitialize=evo.reinitialize,
        example_inputs=torch.zeros(1, 3, size, size),
        on_generation=on_generation,
        latency_table=latency_table if evo.resource == "latency" else None,
    )


class _Study:
    """The callables one study hands the engine: training (the ancestor checked on the
    held-out slice), evaluation (val, reported; held-out, recorded) and selection."""

    def __init__(self, recipe: Recipe, run_dir: Path, data: tuple[LoadedSplit, LoadedSplit], display, timers) -> None:
        train_all, val_split = data
        self.recipe, self.run_dir, self.display = recipe, run_dir, display
        self.train_split, self.held = held_out(recipe, train_all, run_dir)
        self.held_score = _scorer(recipe, self.held.split) if self.held else None
        self.val_score = _scorer(recipe, val_split)
        self.settings, self.teacher = train_settings(recipe), Teacher(recipe.train.distill.teacher, run_dir)
        echo = lambda text: display.progress.console.print(text, markup=False)  # noqa: E731
        self.latency_table = run_table(recipe, run_dir, timers=timers, echo=echo)

    def fit(self, model: torch.nn.Module, ctx: GenerationContext, epochs: float, seed: int, settings=None) -> None:
        train(
            model,
            self.train_split,
            settings or self.settings,
            epochs=epochs,
            seed=seed,
            on_step=self.display.on_step,
            teacher=self.teacher(ctx),
        )

    def train_fn(self, model: torch.nn.Module, ctx: GenerationContext) -> None:
        t = self.recipe.train
        self.display.progress.update(self.display.step_task, description=f"training gen {ctx.generation}")
        if ctx.generation > 0:
            epochs = self.generation_epochs(model)
            self.fit(model, ctx, epochs, ctx.seed)
            return {"epochs": epochs}
        settings = replace(self.settings, lr=ancestor_lr(self.recipe))
        check = self.held_score if t.ancestor_must_improve else None
        checked_ancestor(
            model, lambda: self.fit(model, ctx, t.ancestor_epochs, ctx.seed, settings), check, self.run_dir
        )

    def generation_epochs(self, model: torch.nn.Module) -> float:
        """``train.epochs_per_generation``; with ``train.epoch_growth: macs`` scaled by the
        ancestor's MACs over this offspring's, so that every generation costs about the time
        of the first (cheaper networks train longer)."""
        t = self.recipe.train
        if t.epoch_growth == "none":
            return t.epochs_per_generation
        size = self.recipe.data.eval_size
        ancestor = read_lineage(self.run_dir)[0]["macs"]
        return round(t.epochs_per_generation * ancestor / model_stats(model, torch.zeros(1, 3, size, size))["macs"], 4)

    def eval_fn(self, model: torch.nn.Module) -> dict[str, float]:
        metrics = dict(self.val_score(model))
        if self.held_score is not None:
            held = self.held_score(model)
            metrics.update(holdout_top1=held["top1"], holdout_top5=held["top5"])
        return metrics

    def config(self) -> EvolutionConfig:
        recipe = self.recipe
        # selection scores (at most) proxy_images images: of the held-out slice, or else of the training set
        pool = self.held.split if self.held else self.train_split
        select = fitness_of(recipe, proxy_slice(pool, recipe.evolution.proxy_images), Teacher("ancestor", self.run_dir))
        screen = screen_by_finetune(
            recipe, self.train_split, select, lambda child, ctx, seed, epochs: self.fit(child, ctx, epochs, seed)
        )
        strengths = data_importance(recipe, self.train_split)
        return evolution_config(
            recipe,
            lambda model, ctx: select(model),
            self.display.on_generation,
            screen_fn=screen,
            importance=strengths,
            latency_table=self.latency_table,
        )


def run_study(
    recipe: Recipe,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    timers: TableTimers | None = None,
) -> Path:
    """Run (or resume) the whole study of ``recipe``; return the run directory.

    A recipe that reads a latency table (``resource: latency``, ``round_to: auto``) whose file
    is missing gets it measured first with ``timers`` (default: the recipe's own target), as
    ``squish-plugin run`` does. Under torchrun (see :mod:`squish_plugin.study.distributed`)
    call it on every rank: the ranks train together, agree on every offspring, rank 0 alone
    measures the table and writes ``run_dir``."""
    console = console or Console(quiet=not distributed.is_main())
    world = distributed.world_size()
    if recipe.train.batch_size % world:
        raise InvalidArgumentError(
            f"train.batch_size {recipe.train.batch_size} is not a multiple of the {world} processes; "
            "choose a global batch size every process gets an equal part of."
        )
    with torch_threads(recipe.train.threads):
        return _run(recipe, run_dir, resume, console, world, timers)


def _run(
    recipe: Recipe, run_dir: Path | None, resume: bool, console: Console, world: int, timers: TableTimers | None
) -> Path:
    train_all, val_split = load_data(recipe)
    ancestor = recipe_ancestor(recipe, train_all.classes)
    warning = resolution_warning(recipe, ancestor)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    run_dir = open_run_dir(recipe, run_dir, resume)
    with run_lock(run_dir, "squish-plugin run") if distributed.is_main() else contextlib.nullcontext():
        record_recipe(recipe, run_dir, resume)
        return _evolve_and_finish(recipe, run_dir, resume, console, world, timers, (train_all, val_split), ancestor)


def _evolve_and_finish(recipe, run_dir, resume, console, world, timers, data, ancestor) -> Path:
    train_all, val_split = data
    console.print(f"run directory: {run_dir}" + (f" ({world} processes)" if world > 1 else ""))
    held = read_lineage(run_dir) if resume and (run_dir / LINEAGE_FILE).is_file() else []
    complete = bool(held) and held[-1]["generation"] >= recipe.evolution.generations
    if complete:  # nothing to train: say so, and change no file unless finishing has work left
        console.print(f"the run is complete ({held[-1]['generation']} generations): nothing to train.")
        records, before = held, read_finished(run_dir)
    else:
        display = StudyDisplay(console, recipe.evolution.generations)
        study = _Study(recipe, run_dir, data, display, timers)
        with display.progress:
            records = evolve(
                ancestor,
                train_fn=study.train_fn,
                eval_fn=study.eval_fn,
                run_dir=run_dir,
                config=study.config(),
                seed=recipe.seed,
                resume=resume,
            ).records
    done = finish_networks(run_dir, recipe, train_all, val_split, console)
    if distributed.is_main() and not (complete and done == before):
        rewrite_report(run_dir, recipe, records)
    console.print(f"report: {run_dir / 'report.md'}")
    return run_dir


def finish_study(run_dir: Path, overrides: list[str] | None = None, *, console: Console | None = None) -> Path:
    """The finishing stage on an existing run directory (``squish-plugin finish``): the
    run's recipe with ``finish.*`` overrides (recorded in its ``recipe.yaml``), every named
    network finished (resuming one cut short), the report rewritten; returns ``run_dir``."""
    console = console or Console()
    recipe = finish_recipe(Path(run_dir), overrides or [])
    with torch_threads(recipe.train.threads), run_lock(Path(run_dir), "squish-plugin finish"):
        train_all, val_split = load_data(recipe)
        finish_networks(Path(run_dir), recipe, train_all, val_split, console)
    rewrite_report(run_dir, recipe)
    console.print(f"report: {Path(run_dir) / 'report.md'}")
    return Path(run_dir)


def squishednet_models(run_dir: Path) -> dict[str, int]:
    """``{"ancestor": 0, "squishednet-1": g1, ...}``: the networks a run deploys."""
    recipe = read_run_recipe(run_dir)
    records = read_lineage(run_dir)
    named = select_squishednets(records, recipe.squishednets.sizes_mb, recipe.squishednets.rule)
    models = {"ancestor": 0}
    for entry in named:
        if entry["generation"] is not None:
            models[entry["name"].lower()] = entry["generation"]
    return models


def rewrite_report(run_dir: Path, recipe: Recipe | None = None, records: list[dict] | None = None) -> Path:
    """(Re)write a run's report, with the throughput column from ``throughput.json``
    when a benchmark has filled it."""
    recipe = recipe or read_run_recipe(run_dir)
    records = records or read_lineage(run_dir)
    squished = select_squishednets(records, recipe.squishednets.sizes_mb, recipe.squishednets.rule)
    tp_path = Path(run_dir) / THROUGHPUT_FILE
    throughput = json.loads(tp_path.read_text()) if tp_path.is_file() else None
    if throughput:
        throughput = {"label": throughput["label"], "values": {int(k): v for k, v in throughput["values"].items()}}
    title = f"SquishedNets study: {recipe.name}"
    sections = finished_sections(records, read_finished(run_dir))
    write_report(
        run_dir,
        records,
        squishednets=squished,
        recipe=recipe.model_dump(),
        throughput=throughput,
        title=title,
        sections=sections,
    )
    return Path(run_dir) / "report.md"
