"""``squish-plugin compare``: run the baselines of :mod:`squish_plugin.baselines.pruners` on an
evolutionary run's schedule and write the table, CSV and Pareto plot.

Example:
    >>> from squish_plugin.baselines.recipe import load_compare_recipe
    >>> from squish_plugin.baselines.protocol import run_comparison
    >>> out = run_comparison(load_compare_recipe("examples/compare.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from ..errors import InvalidArgumentError
from ..persistence import atomic_write_bytes, atomic_write_text, load_pruned, save_pruned, write_json_atomic
from ..study.data import LoadedSplit
from ..study.engine import layer_widths, read_lineage
from ..study.finish_run import epochs_at, epochs_of, first_at_most
from ..study.plots import render_comparison
from ..study.recipe import Recipe
from ..study.report import select_squishednets
from ..study.runner import load_data, read_run_recipe, timestamped_dir, train_settings
from ..study.selection import held_out
from ..study.training import evaluate, train
from ..synthesis.genetics import TRAIN_STREAM, derive_seed
from ..synthesis.surgery import model_stats
from ..threads import torch_threads
from .controls import finish_controls
from .pruners import PruneContext, prune_to
from .recipe import CompareRecipe

__all__ = ["COLUMNS", "run_comparison"]

COLUMNS = ("method", "seed", "squishednet", "generation", "params", "size_mb", "macs", "epochs", "top1", "top5")
RESULTS = "results.json"
EQUAL_BUDGET = "equal_budget.csv"
DISTILL = {"none": (False,), "run": (True,), "both": (False, True)}


def _targets(records: list[dict], run_recipe, extra_params: list[int] = ()) -> tuple[dict[int, str], int]:
    named = select_squishednets(records, run_recipe.squishednets.sizes_mb, run_recipe.squishednets.rule)
    gens = {e["generation"]: e["name"] for e in named if e["generation"] is not None}
    for target in extra_params:  # e.g. 123,500 = 10x fewer parameters than SqueezeNet v1.1
        first = first_at_most(records, target)
        if first is None:
            raise InvalidArgumentError(
                f"the run never gets to <= {target:,} parameters (extra_params); run more generations."
            )
        label = f"<={target / 1000:g}k params"
        gens[first] = f"{gens[first]} / {label}" if first in gens else label
    if not gens:
        raise InvalidArgumentError("the run names no SquishedNet yet: let it run more generations first.")
    return gens, max(gens)


def _row(method: str, seed: int, name: str, g: int, stats: dict, metrics: dict, epochs: float) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "squishednet": name,
        "generation": g,
        "params": stats["params"],
        "size_mb": stats["size_mb"],
        "macs": stats["macs"],
        "epochs": epochs,
        "top1": metrics["top1"],
        "top5": metrics["top5"],
    }


@dataclass(frozen=True)
class _Setup:
    """One compared run: its recipe, seed, training images (its held-out slice removed),
    the epochs each generation trains (screening steps included) and the targets."""

    run_dir: Path
    run_recipe: Recipe
    records: list[dict]
    train_split: LoadedSplit
    held: LoadedSplit | None
    val_split: LoadedSplit
    gens: dict[int, str]
    tolerance: float

    @property
    def seed(self) -> int:
        return self.run_recipe.seed

    def epochs(self, g: int) -> float:
        """Every epoch the run's generation ``g`` has trained (screening steps included)."""
        return epochs_at(self.run_recipe, self.records, g, len(self.train_split))

    def epochs_of(self, g: int) -> float:
        """The epochs generation ``g`` of the run trained (what a baseline trains there)."""
        return epochs_of(self.run_recipe, self.records[g], len(self.train_split))

    def ours(self) -> list[dict[str, Any]]:
        by_gen = {r["generation"]: r for r in self.records}
        rows = [_row("ancestor", self.seed, "ancestor", 0, by_gen[0], by_gen[0], self.epochs(0))]
        for g, name in sorted(self.gens.items()):
            rows.append(_row("evolutionary", self.seed, name, g, by_gen[g], by_gen[g], self.epochs(g)))
        return rows


def _setup(run_dir: Path, recipe: CompareRecipe, train_all: LoadedSplit, val_split: LoadedSplit) -> _Setup:
    records, run_recipe = read_lineage(run_dir), read_run_recipe(run_dir)
    gens, _ = _targets(records, run_recipe, recipe.extra_params)
    train_split, held = held_out(run_recipe, train_all, run_dir)
    held_split = held.split if held else None
    return _Setup(run_dir, run_recipe, records, train_split, held_split, val_split, gens, recipe.tolerance)


def _label(method: str, distill: bool) -> str:
    """A baseline's name in the results: ``<method>+kd`` when trained with the run's distillation."""
    return f"{method}+kd" if distill else method


def _baseline(method: str, ancestor, setup: _Setup, console, distill: bool, keep: Path | None) -> list[dict[str, Any]]:
    """One baseline on one run's schedule: a row per target generation (val top-1, and
    held-out top-1 when the run holds a slice out); with ``keep``, the pruned network of
    every target generation is saved there (``gen_XX.pt``) for the finishing stage."""
    run_recipe = setup.run_recipe
    settings = train_settings(run_recipe)
    size = run_recipe.data.eval_size
    example = torch.zeros(1, 3, size, size)
    model, rows = ancestor, []
    kind = run_recipe.train.distill.teacher if distill else "none"
    label = _label(method, distill)
    frozen_ancestor = copy.deepcopy(ancestor) if kind == "ancestor" else None
    for g in range(1, max(setup.gens) + 1):
        seed = derive_seed(run_recipe.seed, g, 0, TRAIN_STREAM)  # the run's training seed of generation g
        ctx = PruneContext(example, setup.train_split, seed, run_recipe.train.batch_size)
        parent = model
        model = prune_to(model, method, setup.records[g]["params"], ctx, tolerance=setup.tolerance)
        teacher = {"ancestor": frozen_ancestor, "parent": parent}.get(kind)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train(model, setup.train_split, settings, epochs=setup.epochs_of(g), seed=seed, teacher=teacher)
        if g in setup.gens:
            metrics = evaluate(model, setup.val_split, batch_size=run_recipe.train.eval_batch_size)
            stats = model_stats(model, example)
            row = _row(label, setup.seed, setup.gens[g], g, stats, metrics, setup.epochs(g))
            if setup.held is not None:
                row["holdout_top1"] = evaluate(model, setup.held, batch_size=run_recipe.train.eval_batch_size)["top1"]
            if keep is not None:
                save_pruned(model, keep / f"gen_{g:02d}.pt")
            rows.append({**row, "widths": layer_widths(model)})  # the structure: what its speed depends on
            console.print(
                f"{label:16s} seed {setup.seed} {setup.gens[g]}  {stats['params']:>9,} params  "
                f"top-1 {metrics['top1']:5.1f}%"
            )
    return rows


def _order(r: dict) -> tuple:
    return (r["generation"], r["method"] not in ("ancestor", "evolutionary"), r["method"], r.get("seed", 0))


def _summary(rows: list[dict]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per SquishedNet (its generation may differ
    between seeds) and method; sizes in the run's order, the ancestor first."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(rows, key=_order):
        groups.setdefault((r["squishednet"], r["method"]), []).append(r)
    out = []
    for (name, method), members in groups.items():
        top1 = [m["top1"] for m in members]
        mean = sum(top1) / len(top1)
        sd = math.sqrt(sum((x - mean) ** 2 for x in top1) / (len(top1) - 1)) if len(top1) > 1 else 0.0
        params = round(sum(m["params"] for m in members) / len(members))
        first = min(m["generation"] for m in members)
        out.append(
            {
                "squishednet": name,
                "method": method,
                "n": len(top1),
                "mean": mean,
                "sd": sd,
                "params": params,
                "g": first,
            }
        )
    sizes = {}
    for s in out:
        sizes[s["squishednet"]] = min(sizes.get(s["squishednet"], s["g"]), s["g"])
    kind = {"ancestor": 0, "evolutionary": 1}
    return sorted(out, key=lambda s: (sizes[s["squishednet"]], kind.get(s["method"], 2), s["method"]))


def _markdown(recipe: CompareRecipe, rows: list[dict], runs: list[Path]) -> str:
    lines = [
        f"# Comparison: {recipe.name}",
        "",
        "Against the evolutionary run(s) " + ", ".join(f"`{r}`" for r in runs) + " (one per seed).",
        "",
        "Protocol: every method starts from the run's ancestor (`gen_00.pt`) and follows the run's",
        "schedule: at generation g it is pruned to the run's parameter count of generation g",
        f"(within {recipe.tolerance:.0%}) and trained for the run's epochs per generation (its offspring",
        "screening steps included) with the same optimiser, data, resolution and seed, on the run's",
        "training images less its held-out slice. Baselines prune every layer by one uniform ratio (the",
        "classifier excluded), as one NNI `config_list` entry does; NNI masks are applied physically",
        "through torch-pruning. `epochs` counts all training epochs since the pretrained weights.",
        "A method named `<method>+kd` was trained with the run's own knowledge distillation",
        "(`train.distill`: the same teacher); the others with plain cross-entropy. Top-1 on the",
        "validation split, which no choice saw.",
        "",
        "## Mean over seeds",
        "",
        "| SquishedNet | method | seeds | params | top-1 (%) mean ± sd |",
        "|---|---|---:|---:|---:|",
    ]
    for s in _summary(rows):
        lines.append(
            f"| {s['squishednet']} | {s['method']} | {s['n']} | {s['params']:,} | {s['mean']:.2f} ± {s['sd']:.2f} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        "| method | seed | SquishedNet | generation | params | size (MB) | MACs (M) | epochs | top-1 (%) | top-5 (%) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=_order):
        lines.append(
            f"| {r['method']} | {r.get('seed', 0)} | {r['squishednet']} | {r['generation']} | {r['params']:,} "
            f"| {r['size_mb']:.3f} | {r['macs'] / 1e6:.1f} | {r['epochs']:g} | {r['top1']:.2f} | {r['top5']:.2f} |"
        )
    lines += ["", "![top-1 vs parameters](pareto.png)", ""]
    return "\n".join(lines)


def _equal_budget(rows: list[dict], eval_size: int) -> str:
    """One row per method, seed and size: ``method,seed,params,macs,epochs,top1_<size>``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "seed", "params", "macs", "epochs", f"top1_{eval_size}"])
    for r in sorted(rows, key=_order):
        writer.writerow([r["method"], r.get("seed", 0), r["params"], r["macs"], f"{r['epochs']:g}", f"{r['top1']:.2f}"])
    return buf.getvalue()


def _write(out: Path, recipe: CompareRecipe, rows: list[dict], runs: list[Path], eval_size: int) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["method"], r.get("seed", 0), r["generation"])))
    atomic_write_text(out / "comparison.csv", buf.getvalue())
    atomic_write_text(out / EQUAL_BUDGET, _equal_budget(rows, eval_size))
    png = render_comparison(rows)
    if png is not None:
        atomic_write_bytes(out / "pareto.png", png)
    atomic_write_text(out / "comparison.md", _markdown(recipe, rows, runs))


def _check_runs(recipe: CompareRecipe) -> list[Recipe]:
    """The runs' recipes; one sentence when they cannot be compared as the recipe asks."""
    for run in recipe.run_dirs():
        read_lineage(run)  # first: "not a finished run" says the most
    recipes = [read_run_recipe(run) for run in recipe.run_dirs()]
    for run, run_recipe in zip(recipe.run_dirs(), recipes):
        if recipe.distill != "none" and run_recipe.train.distill.teacher == "none":
            raise InvalidArgumentError(
                f"distill '{recipe.distill}' needs a run trained with distillation, but '{run}' has "
                "train.distill.teacher 'none'; use distill 'none' or a run with teacher 'ancestor' or 'parent'."
            )
    seeds = [r.seed for r in recipes]
    if len(set(seeds)) != len(seeds):
        raise InvalidArgumentError(f"the compared runs must have different seeds, got {seeds}.")
    if any(r.data != recipes[0].data for r in recipes):
        raise InvalidArgumentError("the compared runs must share their data section (the same images and slice).")
    return recipes


def run_comparison(recipe: CompareRecipe, *, out_dir: Path | None = None, console: Console | None = None) -> Path:
    """Run every baseline of ``recipe`` against every run (seed), skipping those already in
    ``out_dir``'s results, so a killed comparison resumes, and write the comparison files."""
    console = console or Console()
    recipes = _check_runs(recipe)
    runs = recipe.run_dirs()
    out = out_dir or timestamped_dir(recipe.output.dir, recipe.name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.yaml", yaml.safe_dump(recipe.model_dump(), sort_keys=False))
    done = json.loads((out / RESULTS).read_text()) if (out / RESULTS).is_file() else {}
    with torch_threads(recipe.threads or recipes[0].train.threads):
        _compare(recipe, recipes, runs, out, done, console)
    console.print(f"comparison: {out / 'comparison.md'}")
    return out


def _compare(recipe: CompareRecipe, recipes: list, runs: list[Path], out: Path, done: dict, console: Console) -> None:
    train_all, val_split = load_data(recipes[0])
    setups = []
    for run_dir in runs:
        setup = _setup(run_dir, recipe, train_all, val_split)
        setups.append(setup)
        done[f"evolutionary@{setup.seed}"] = setup.ours()
        ancestor = load_pruned(run_dir / setup.records[0]["checkpoint"])
        for method in recipe.methods:
            for distill in DISTILL[recipe.distill]:
                key = f"{_label(method, distill)}@{setup.seed}"
                if key in done:
                    continue
                console.print(f"[bold]{key}[/]: generations 1..{max(setup.gens)} on the run's schedule")
                keep = out / "checkpoints" / key if recipe.finish else None
                done[key] = _baseline(method, ancestor, setup, console, distill, keep)
                write_json_atomic(out / RESULTS, done)
    write_json_atomic(out / RESULTS, done)
    _write(out, recipe, [row for rows in done.values() for row in rows], runs, recipes[0].data.eval_size)
    if recipe.finish or recipe.scratch:
        finish_controls(out, recipe, setups, done, train_all, console)
