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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from ..errors import InvalidArgumentError
from ..persistence import atomic_write_bytes, atomic_write_text, load_pruned, write_json_atomic
from ..study.data import LoadedSplit
from ..study.engine import read_lineage
from ..study.plots import render_comparison
from ..study.recipe import Recipe
from ..study.report import select_squishednets
from ..study.runner import load_data, read_run_recipe, timestamped_dir, train_settings
from ..study.training import evaluate, train
from ..synthesis.genetics import derive_seed
from ..synthesis.surgery import model_stats
from .pruners import PruneContext, prune_to
from .recipe import CompareRecipe

__all__ = ["COLUMNS", "run_comparison"]

COLUMNS = ("method", "squishednet", "generation", "params", "size_mb", "macs", "epochs", "top1", "top5")
RESULTS = "results.json"
EQUAL_BUDGET = "equal_budget.csv"


def _targets(records: list[dict], run_recipe, extra_params: list[int] = ()) -> tuple[dict[int, str], int]:
    named = select_squishednets(records, run_recipe.squishednets.sizes_mb, run_recipe.squishednets.rule)
    gens = {e["generation"]: e["name"] for e in named if e["generation"] is not None}
    for target in extra_params:  # e.g. 123,500 = 10x fewer parameters than SqueezeNet v1.1
        first = next((r["generation"] for r in records if r["generation"] > 0 and r["params"] <= target), None)
        if first is None:
            raise InvalidArgumentError(
                f"the run never gets to <= {target:,} parameters (extra_params); run more generations."
            )
        label = f"<={target / 1000:g}k params"
        gens[first] = f"{gens[first]} / {label}" if first in gens else label
    if not gens:
        raise InvalidArgumentError("the run names no SquishedNet yet: let it run more generations first.")
    return gens, max(gens)


def _ours(records: list[dict], gens: dict[int, str], epochs) -> list[dict[str, Any]]:
    by_gen = {r["generation"]: r for r in records}
    return [
        {
            "method": "evolutionary",
            "squishednet": name,
            "generation": g,
            "params": by_gen[g]["params"],
            "size_mb": by_gen[g]["size_mb"],
            "macs": by_gen[g]["macs"],
            "epochs": epochs(g),
            "top1": by_gen[g]["top1"],
            "top5": by_gen[g]["top5"],
        }
        for g, name in sorted(gens.items())
    ]


@dataclass(frozen=True)
class _Setup:
    """What every baseline shares: the run's recipe, its data, the epoch count, the tolerance."""

    run_recipe: Recipe
    train_split: LoadedSplit
    val_split: LoadedSplit
    epochs: Callable[[int], float]
    tolerance: float


def _label(method: str, distill: bool) -> str:
    """A baseline's name in the results: ``<method>+kd`` when trained with the run's distillation."""
    return f"{method}+kd" if distill else method


def _baseline(method, ancestor, records, gens, last, setup: _Setup, console, distill: bool) -> list[dict[str, Any]]:
    run_recipe, train_split, val_split, epochs = setup.run_recipe, setup.train_split, setup.val_split, setup.epochs
    settings = train_settings(run_recipe)
    size = run_recipe.data.eval_size
    example = torch.zeros(1, 3, size, size)
    model, rows = ancestor, []
    kind = run_recipe.train.distill.teacher if distill else "none"
    label = _label(method, distill)
    frozen_ancestor = copy.deepcopy(ancestor) if kind == "ancestor" else None
    for g in range(1, last + 1):
        seed = derive_seed(run_recipe.seed, g, 0, 1)  # the run's training seed of generation g
        ctx = PruneContext(example, train_split, seed, run_recipe.train.batch_size)
        parent = model
        model = prune_to(model, method, records[g]["params"], ctx, tolerance=setup.tolerance)
        teacher = {"ancestor": frozen_ancestor, "parent": parent}.get(kind)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train(
                model, train_split, settings, epochs=run_recipe.train.epochs_per_generation, seed=seed, teacher=teacher
            )
        if g in gens:
            metrics = evaluate(model, val_split, batch_size=run_recipe.train.eval_batch_size)
            stats = model_stats(model, example)
            rows.append(
                {
                    "method": label,
                    "squishednet": gens[g],
                    "generation": g,
                    "params": stats["params"],
                    "size_mb": stats["size_mb"],
                    "macs": stats["macs"],
                    "epochs": epochs(g),
                    **metrics,
                }
            )
            console.print(f"{label:16s} {gens[g]}  {stats['params']:>9,} params  top-1 {metrics['top1']:5.1f}%")
    return rows


def _markdown(recipe: CompareRecipe, rows: list[dict], run_dir: Path) -> str:
    lines = [
        f"# Comparison: {recipe.name}",
        "",
        f"Against the evolutionary run `{run_dir}`.",
        "",
        "Protocol: every method starts from the run's trained ancestor (`gen_00.pt`) and follows the",
        "run's schedule: at generation g it is pruned to the run's parameter count of generation g",
        f"(within {recipe.tolerance:.0%}) and trained for the run's `epochs_per_generation` with the same",
        "optimiser, data, resolution and seed. Baselines prune every layer by one uniform ratio (the",
        "classifier excluded), as one NNI `config_list` entry does; NNI masks are applied physically",
        "through torch-pruning. `epochs` counts all training epochs since the pretrained weights.",
        "Baselines train with plain cross-entropy, as users of those pruners fine-tune; a method named",
        "`<method>+kd` was trained with the run's own knowledge distillation (`train.distill`) instead.",
        "",
        "| method | SquishedNet | generation | params | size (MB) | MACs (M) | epochs | top-1 (%) | top-5 (%) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["generation"], r["method"] != "evolutionary", r["method"])):
        lines.append(
            f"| {r['method']} | {r['squishednet']} | {r['generation']} | {r['params']:,} | {r['size_mb']:.3f} "
            f"| {r['macs'] / 1e6:.1f} | {r['epochs']:g} | {r['top1']:.2f} | {r['top5']:.2f} |"
        )
    lines += ["", "![top-1 vs parameters](pareto.png)", ""]
    return "\n".join(lines)


def _equal_budget(rows: list[dict], eval_size: int) -> str:
    """The issue-#8 table: one row per method and size, ``method,params,macs,epochs,top1_<size>``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "params", "macs", "epochs", f"top1_{eval_size}"])
    for r in sorted(rows, key=lambda r: (r["generation"], r["method"] != "evolutionary", r["method"])):
        writer.writerow([r["method"], r["params"], r["macs"], f"{r['epochs']:g}", f"{r['top1']:.2f}"])
    return buf.getvalue()


def _write(out: Path, recipe: CompareRecipe, rows: list[dict], run_dir: Path, eval_size: int) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["method"], r["generation"])))
    atomic_write_text(out / "comparison.csv", buf.getvalue())
    atomic_write_text(out / EQUAL_BUDGET, _equal_budget(rows, eval_size))
    png = render_comparison(rows)
    if png is not None:
        atomic_write_bytes(out / "pareto.png", png)
    atomic_write_text(out / "comparison.md", _markdown(recipe, rows, run_dir))


def run_comparison(recipe: CompareRecipe, *, out_dir: Path | None = None, console: Console | None = None) -> Path:
    """Run every baseline of ``recipe`` (skipping those already in ``out_dir``'s
    results, so a killed comparison resumes) and write the comparison files."""
    console = console or Console()
    run_dir = Path(recipe.run)
    records = read_lineage(run_dir)
    run_recipe = read_run_recipe(run_dir)
    if recipe.distill == "run" and run_recipe.train.distill.teacher == "none":
        raise InvalidArgumentError(
            f"distill 'run' needs a run trained with distillation, but '{run_dir}' has train.distill.teacher "
            "'none'; use distill 'none' or a run with teacher 'ancestor' or 'parent'."
        )
    gens, last = _targets(records, run_recipe, recipe.extra_params)
    torch.set_num_threads(recipe.threads or run_recipe.train.threads)
    out = out_dir or timestamped_dir(recipe.output.dir, recipe.name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.yaml", yaml.safe_dump(recipe.model_dump(), sort_keys=False))
    done = json.loads((out / RESULTS).read_text()) if (out / RESULTS).is_file() else {}
    t = run_recipe.train

    def epochs(g: int) -> float:
        return t.ancestor_epochs + g * t.epochs_per_generation

    done["evolutionary"] = _ours(records, gens, epochs)
    train_split, val_split = load_data(run_recipe)
    ancestor = load_pruned(run_dir / records[0]["checkpoint"])
    distill = recipe.distill == "run"
    for method in recipe.methods:
        label = _label(method, distill)
        if label in done:
            continue
        console.print(f"[bold]{label}[/]: generations 1..{last} on the run's schedule")
        setup = _Setup(run_recipe, train_split, val_split, epochs, recipe.tolerance)
        done[label] = _baseline(method, ancestor, records, gens, last, setup, console, distill)
        write_json_atomic(out / RESULTS, done)
    write_json_atomic(out / RESULTS, done)
    _write(out, recipe, [row for rows in done.values() for row in rows], run_dir, run_recipe.data.eval_size)
    console.print(f"comparison: {out / 'comparison.md'}")
    return out
