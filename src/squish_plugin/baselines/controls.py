"""Fair controls with the same finishing (issue #25): after ``squish-plugin compare`` has run
its baselines, the runs' own named networks are finished (each run's ``finish`` section),
the best distilled baseline, chosen on the held-out slice before finishing, gets the same
finishing at ``finish_nets``, and ``scratch`` trains the same widths from random
initialisation for the same total epochs with the same distillation (at ``scratch_lr`` where
the recipe gives one). The result is
``finished.json`` (resumable, one entry per method, seed and network), ``finished.csv``
and ``finished.png`` in the comparison's folder.

Example:
    >>> rows = {"a+kd@0": [{"generation": 1, "holdout_top1": 80.0}],
    ...         "b+kd@0": [{"generation": 1, "holdout_top1": 82.0}]}
    >>> best_baseline(rows, {0: [1]})
    'b+kd'
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import InvalidArgumentError
from ..persistence import atomic_write_bytes, atomic_write_text, load_pruned, write_json_atomic
from ..study.data import LoadedSplit
from ..study.engine import read_lineage, reinitialize
from ..study.finish_run import (
    FinishData,
    finish_model,
    finish_networks,
    finish_settings,
    named_networks,
    read_finished,
)
from ..study.plots import render_comparison
from ..study.rundir import read_run_recipe
from ..synthesis.genetics import FINISH_STREAM, SCRATCH_STREAM, derive_seed

__all__ = ["FINISHED", "FINISHED_CSV", "best_baseline", "finish_controls", "finished_rows", "write_finished_table"]

FINISHED = "finished.json"
FINISHED_CSV = "finished.csv"


def best_baseline(done: dict[str, list[dict]], gens_by_seed: dict[int, list[int]]) -> str:
    """The baseline (``<method>+kd`` when there are distilled ones) with the best mean
    held-out top-1 at selection over the seeds and generations of ``gens_by_seed``."""
    labels = sorted({k.split("@")[0] for k in done} - {"evolutionary"})
    if any(label.endswith("+kd") for label in labels):
        labels = [label for label in labels if label.endswith("+kd")]
    means = {}
    for label in labels:
        scores = []
        for seed, gens in gens_by_seed.items():
            rows = {r["generation"]: r for r in done.get(f"{label}@{seed}", [])}
            for g in gens:
                if rows.get(g, {}).get("holdout_top1") is None:
                    raise InvalidArgumentError(
                        f"baseline {label}@{seed} has no held-out top-1 at generation {g} (a result from before "
                        "they were recorded, or runs without data.holdout); delete it from results.json to rerun it."
                    )
                scores.append(rows[g]["holdout_top1"])
        means[label] = sum(scores) / len(scores)
    if not means:
        raise InvalidArgumentError("compare's finish needs at least one baseline method.")
    return max(sorted(means), key=lambda label: means[label])


def _nets(setup, recipe) -> dict[str, int]:
    """``{name: generation}`` of ``recipe.finish_nets`` in one run."""
    sq = setup.run_recipe.squishednets
    named = named_networks(setup.records, sq.sizes_mb, sq.rule, recipe.extra_params)
    by_name = {n: g for g, names in named.items() for n in names}
    missing = [n for n in recipe.finish_nets if n not in by_name]
    if missing:
        raise InvalidArgumentError(
            f"finish_nets names '{missing[0]}', which run '{setup.run_dir}' does not reach; "
            f"it names {sorted(by_name)} (extra_params adds points such as '10x')."
        )
    return {n: by_name[n] for n in recipe.finish_nets}


def _own_finishing(setup, recipe, train_all: LoadedSplit, data: FinishData, console: Console) -> None:
    """The run's own named networks (and the comparison's extra points) finished, resumably."""
    run_recipe = setup.run_recipe
    if run_recipe.finish.epochs == 0:
        raise InvalidArgumentError(
            f"run '{setup.run_dir}' has no finishing stage (finish.epochs 0); finish it first: "
            f"squish-plugin finish {setup.run_dir} --set finish.epochs=N"
        )
    extra = sorted(set(run_recipe.squishednets.extra_params) | set(recipe.extra_params), reverse=True)
    named = run_recipe.squishednets.model_copy(update={"extra_params": extra})
    widened = run_recipe.model_copy(update={"squishednets": named})
    finish_networks(setup.run_dir, widened, train_all, setup.val_split, console, data=data)


def finish_controls(
    out: Path, recipe, setups: list, done: dict[str, list[dict]], train_all: LoadedSplit, console: Console
) -> dict[str, dict[str, Any]]:
    """Finish the runs, the best baseline and the scratch controls (see the module); write
    and return ``finished.json``'s entries."""
    finished = json.loads((out / FINISHED).read_text()) if (out / FINISHED).is_file() else {}
    nets = {s.seed: _nets(s, recipe) for s in setups}
    datas = {  # the splits compare cut already, and each run's ancestor as the teacher
        s.seed: FinishData.of_splits(s.run_dir, s.run_recipe, s.train_split, s.held, s.val_split, s.records)
        for s in setups
    }
    for setup in setups:
        _own_finishing(setup, recipe, train_all, datas[setup.seed], console)
    best = best_baseline(done, {seed: sorted(set(n.values())) for seed, n in nets.items()}) if recipe.finish else None
    if best:
        console.print(
            f"best distilled baseline on the held-out slice: [bold]{best}[/] (finished at {recipe.finish_nets})"
        )
    for setup in setups:
        data = datas[setup.seed]
        settings = finish_settings(setup.run_recipe)
        for name, g in nets[setup.seed].items():
            jobs = [(best, settings)] if best else []
            if recipe.scratch:  # the same total epochs as the evolutionary network's, from random weights
                epochs, lr = max(1, round(setup.epochs(g) + settings.epochs)), recipe.scratch_lr or settings.lr
                jobs.append(("scratch", replace(settings, epochs=epochs, lr=lr)))
            for method, how in jobs:
                key = f"{method}@{setup.seed}@{name}"
                if finished.get(key, {}).get("settings") == how.fingerprint():
                    continue
                into = out / "checkpoints" / f"{method}@{setup.seed}" / f"gen_{g:02d}-finished.pt"
                seed = derive_seed(setup.seed, FINISH_STREAM, g)
                model = _scratch_model(setup, g) if method == "scratch" else _baseline_model(out, method, setup.seed, g)
                entry = finish_model(model, data, how, seed=seed, into=into, label=key, console=console)
                total = how.epochs if method == "scratch" else setup.epochs(g) + how.epochs
                entry.update(method=method, seed=setup.seed, net=name, generation=g, total_epochs=round(total, 4))
                finished[key] = entry
                write_json_atomic(out / FINISHED, finished)
    rows = finished_rows([s.run_dir for s in setups], finished)
    write_finished_table(out / FINISHED_CSV, rows, setups[0].run_recipe.data.eval_size)
    return finished


def _baseline_model(out: Path, label: str, seed: int, g: int):
    path = out / "checkpoints" / f"{label}@{seed}" / f"gen_{g:02d}.pt"
    if not path.is_file():
        raise InvalidArgumentError(
            f"baseline {label}@{seed} kept no network of generation {g} ('{path}'; results from a comparison "
            "without finish); delete its entry from results.json to run it again."
        )
    return load_pruned(path)


def _scratch_model(setup, g: int):
    model = load_pruned(setup.run_dir / setup.records[g]["checkpoint"])
    reinitialize(model, derive_seed(setup.seed, SCRATCH_STREAM, g))
    return model


def finished_rows(run_dirs: Sequence[Path], controls: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """One row per method, seed and network: each run's ancestor and finished networks
    (its ``finished.json``), then the controls (a comparison's ``finished.json``)."""
    rows = []
    for run_dir in run_dirs:
        recipe, records = read_run_recipe(run_dir), read_lineage(run_dir)
        rows.append(_csv_row("ancestor", recipe.seed, "ancestor", records[0], recipe.train.ancestor_epochs))
        for entry in sorted(read_finished(run_dir).values(), key=lambda e: e["generation"]):
            rows += [_csv_row("evolutionary", recipe.seed, n, entry, entry["total_epochs"]) for n in entry["names"]]
    for entry in sorted((controls or {}).values(), key=lambda e: (e["method"], e["seed"], e["generation"])):
        rows.append(_csv_row(entry["method"], entry["seed"], entry["net"], entry, entry["total_epochs"]))
    return rows


def _csv_row(method: str, seed: int, net: str, entry: Mapping[str, Any], epochs: float) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "net": net,
        "params": entry["params"],
        "macs": entry["macs"],
        "epochs": round(epochs, 4),
        "top1": entry["top1"],
        "holdout_top1": entry.get("holdout_top1"),
    }


def write_finished_table(path: Path, rows: Sequence[Mapping[str, Any]], eval_size: int) -> None:
    """``path`` (CSV: ``method,seed,net,params,macs,epochs,top1_<eval_size>,holdout_top1``) and
    a plot beside it (same name, ``.png``: top-1 vs parameters, mean and sd over seeds)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "seed", "net", "params", "macs", "epochs", f"top1_{eval_size}", "holdout_top1"])
    for r in rows:
        held = "" if r["holdout_top1"] is None else f"{r['holdout_top1']:.2f}"
        fields = (r["method"], r["seed"], r["net"], r["params"], r["macs"], f"{r['epochs']:g}", f"{r['top1']:.2f}")
        writer.writerow([*fields, held])
    atomic_write_text(path, buf.getvalue())
    curves = [{**r, "squishednet": r["net"]} for r in rows if r["method"] != "ancestor"]
    png = render_comparison(curves, title="After the finishing stage")
    if png is not None:
        atomic_write_bytes(path.with_suffix(".png"), png)
