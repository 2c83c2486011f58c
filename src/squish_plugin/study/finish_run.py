"""The finishing stage of a run directory: every named network (SquishedNet-1..k and the
``squishednets.extra_params`` points) fine-tuned with distillation from the run's ancestor,
resumable per epoch, recorded in ``finished.json`` with its checkpoint beside the others.

Example:
    >>> recs = [{"generation": g, "size_mb": s, "params": int(s * 250_000), "top1": 0.0}
    ...         for g, s in [(0, 2.9), (1, 2.3), (2, 1.8), (3, 0.4)]]
    >>> named_networks(recs, (2.4, 2.0), "first_below", [123_500])
    {1: ['SquishedNet-1'], 2: ['SquishedNet-2'], 3: ['10x']}
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..errors import InvalidArgumentError
from ..persistence import load_pruned, save_pruned, write_json_atomic
from ..synthesis.genetics import FINISH_STREAM, derive_seed
from ..synthesis.surgery import model_stats
from . import distributed
from .data import LoadedSplit
from .engine import read_lineage
from .finishing import FinishSettings, finish
from .recipe import Recipe
from .report import SQUEEZENET1_1_PARAMS, select_squishednets
from .selection import held_out
from .training import evaluate

__all__ = [
    "FINISHED_FILE",
    "FinishData",
    "finish_model",
    "finish_networks",
    "finish_settings",
    "finished_sections",
    "epochs_at",
    "epochs_of",
    "named_networks",
    "read_finished",
    "wanted_networks",
]

FINISHED_FILE = "finished.json"


def extra_name(params: int) -> str:
    """A parameter-count point named by its reduction vs SqueezeNet v1.1: 123,500 -> ``10x``."""
    return f"{SQUEEZENET1_1_PARAMS / params:.3g}x"


def named_networks(
    records: Sequence[Mapping[str, Any]], sizes_mb: Sequence[float], rule: str, extra_params: Sequence[int] = ()
) -> dict[int, list[str]]:
    """``{generation: [names]}`` of the networks a run ships: SquishedNet-1..k (see
    :func:`~squish_plugin.study.report.select_squishednets`) and, per ``extra_params``
    count, the first offspring at or below it; targets a run never reached are left out."""
    named: dict[int, list[str]] = {}
    for entry in select_squishednets(records, sizes_mb, rule):
        if entry["generation"] is not None:
            named.setdefault(entry["generation"], []).append(entry["name"])
    for target in extra_params:
        first = first_at_most(records, target)
        if first is not None:
            named.setdefault(first, []).append(extra_name(target))
    return dict(sorted(named.items()))


def first_at_most(records: Sequence[Mapping[str, Any]], params: int) -> int | None:
    """The first offspring generation with at most ``params`` parameters (None: never reached)."""
    return min((r["generation"] for r in records if r["generation"] > 0 and r["params"] <= params), default=None)


def epochs_of(recipe: Recipe, record: Mapping[str, Any], train_images: int) -> float:
    """The epochs one generation's survivor trained: its record's ``epochs`` (what
    ``train.epoch_growth`` gave it; ``train.epochs_per_generation`` in runs from before they
    were recorded), plus its screening steps under ``selection: finetune`` among several."""
    t, evo = recipe.train, recipe.evolution
    epochs = record.get("epochs", t.epochs_per_generation)
    if evo.selection == "finetune" and evo.offspring_per_generation > 1:
        epochs += evo.screen_steps / max(1, math.ceil(train_images / t.batch_size))
    return epochs


def epochs_at(recipe: Recipe, records: Sequence[Mapping[str, Any]], generation: int, train_images: int) -> float:
    """Every training epoch generation ``generation`` has seen since the pretrained weights."""
    by_gen = {r["generation"]: r for r in records}
    trained = sum(epochs_of(recipe, by_gen[g], train_images) for g in range(1, generation + 1))
    return round(recipe.train.ancestor_epochs + trained, 4)


def finish_settings(recipe: Recipe, device: str | None = None) -> FinishSettings:
    """The :class:`FinishSettings` of a recipe's ``finish`` section (batch size, windows,
    memory format and device from ``train`` and ``data``)."""
    f, t = recipe.finish, recipe.train
    names = {field.name for field in fields(FinishSettings)}
    shared = {k: getattr(t, k) for k in names & set(type(t).model_fields)}  # the finish section's win below
    shared.update({k: getattr(f, k) for k in names & set(type(f).model_fields)})
    shared.update(alpha=f.alpha if f.teacher != "none" else 0.0, full_size_epochs=min(f.full_size, f.epochs))
    return FinishSettings(**{**shared, "crop": recipe.data.train_crop, "device": device or t.device})


def read_finished(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``finished.json`` of a run, keyed by generation (as text); empty before finishing."""
    path = Path(run_dir) / FINISHED_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class FinishData:
    """What finishing a network of a run needs: its recipe, training images (held-out
    slice removed), held-out slice (scored after every epoch), val split (scored once, at
    the end, only reported) and teacher (None: plain cross-entropy)."""

    recipe: Recipe
    train_split: LoadedSplit
    held: LoadedSplit | None
    val_split: LoadedSplit
    teacher: torch.nn.Module | None

    @classmethod
    def of_run(
        cls,
        run_dir: Path,
        recipe: Recipe,
        train_all: LoadedSplit,
        val_split: LoadedSplit,
        records: Sequence[Mapping[str, Any]] | None = None,
    ) -> FinishData:
        """From all the training images: the run's held-out slice is cut out (and decoded as val)."""
        train_split, held = held_out(recipe, train_all, run_dir)
        return cls.of_splits(run_dir, recipe, train_split, held.split if held else None, val_split, records)

    @classmethod
    def of_splits(
        cls,
        run_dir: Path,
        recipe: Recipe,
        train_split: LoadedSplit,
        held: LoadedSplit | None,
        val_split: LoadedSplit,
        records: Sequence[Mapping[str, Any]] | None = None,
    ) -> FinishData:
        """From splits already cut (compare's), with the run's ancestor as the teacher."""
        records = records if records is not None else read_lineage(run_dir)
        teacher = load_pruned(run_dir / records[0]["checkpoint"]) if recipe.finish.teacher == "ancestor" else None
        return cls(recipe, train_split, held, val_split, teacher)

    def score(self, model: torch.nn.Module, split: LoadedSplit) -> dict[str, float]:
        t = self.recipe.train
        return evaluate(model, split, batch_size=t.eval_batch_size, channels_last=t.channels_last, device=t.device)


def finish_networks(
    run_dir: Path,
    recipe: Recipe,
    train_all: LoadedSplit,
    val_split: LoadedSplit,
    console: Console,
    *,
    data: FinishData | None = None,
) -> dict[str, dict[str, Any]]:
    """Finish every named network of ``run_dir`` that ``finished.json`` does not hold yet
    with the recipe's ``finish`` settings (a network finished with other settings is
    finished again); return the file's entries. ``data``: the splits and teacher when the
    caller has them already (``train_all`` is then not cut again)."""
    settings = finish_settings(recipe)
    done = read_finished(run_dir)
    if settings.epochs == 0:
        return done
    records = read_lineage(run_dir)
    wanted = wanted_networks(records, recipe)  # before the held-out slice is cut and the teacher loaded
    data = data or FinishData.of_run(run_dir, recipe, train_all, val_split, records)
    renamed = False
    for g, names in wanted.items():
        entry = done.get(str(g), {})
        if entry.get("settings") == settings.fingerprint():  # finished already: at most a new name
            new = [n for n in names if n not in entry["names"]]
            entry["names"], renamed = entry["names"] + new, renamed or bool(new)
            continue
        source = run_dir / records[g]["checkpoint"]
        if not source.is_file():
            raise InvalidArgumentError(
                f"{' / '.join(names)} (generation {g}) cannot be finished: its checkpoint '{source}' is gone "
                "(finish.networks can leave it out)."
            )
        entry = finish_model(
            load_pruned(source),
            data,
            settings,
            seed=derive_seed(recipe.seed, FINISH_STREAM, g),
            into=run_dir / "checkpoints" / f"gen_{g:02d}-finished.pt",
            label=" / ".join(names),
            console=console,
        )
        selected = {"top1": records[g]["top1"], "holdout_top1": records[g].get("holdout_top1")}
        total = epochs_at(recipe, records, g, len(data.train_split)) + settings.epochs
        entry.update(names=names, generation=g, selected=selected, total_epochs=round(total, 4))
        entry["checkpoint"] = f"checkpoints/gen_{g:02d}-finished.pt"
        done[str(g)] = entry
        if distributed.is_main():
            write_json_atomic(run_dir / FINISHED_FILE, done)
    if distributed.is_main() and renamed:
        write_json_atomic(run_dir / FINISHED_FILE, done)  # names added to networks finished before
    return done


def wanted_networks(records: Sequence[Mapping[str, Any]], recipe: Recipe) -> dict[int, list[str]]:
    """``{generation: [names]}`` of the named networks a finishing pass trains: those
    ``recipe.finish.networks`` asks for (every one when it is not set); a name the run lacks
    is refused in one sentence that lists the run's named networks."""
    sq = recipe.squishednets
    named = named_networks(records, sq.sizes_mb, sq.rule, sq.extra_params)
    wanted = recipe.finish.networks
    if wanted is None:
        return named
    known = [n for names in named.values() for n in names]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise InvalidArgumentError(
            f"finish.networks names {', '.join(unknown)}, which this run does not have; "
            f"its named networks are {', '.join(known) or 'none'}."
        )
    return {g: names for g, names in named.items() if set(names) & set(wanted)}


def finish_model(
    model: torch.nn.Module,
    data: FinishData,
    settings: FinishSettings,
    *,
    seed: int,
    into: Path,
    label: str,
    console: Console,
) -> dict[str, Any]:
    """Finish ``model`` (resuming from ``<into>-state`` beside ``into``), save it to
    ``into``, and return its figures: size, epochs, val and held-out top-1, seconds, the
    per-epoch history and the settings."""
    state = into.with_name(into.stem + "-state.pt")
    held = data.held
    history = finish(
        model,
        data.train_split,
        teacher=data.teacher,
        settings=settings,
        seed=seed,
        state_path=state,
        score=(lambda m: {"holdout_top1": data.score(m, held)["top1"]}) if held is not None else None,
        on_epoch=lambda r: console.print(
            f"finish {label}: epoch {r['epoch']}/{settings.epochs}"
            + (f"  held-out top-1 {r['holdout_top1']:.1f}%" if "holdout_top1" in r else "")
            + f"  {r['seconds']:.0f}s"
        ),
    )
    started = time.perf_counter()
    metrics = data.score(model, data.val_split)
    size = data.recipe.data.eval_size
    stats = model_stats(model, torch.zeros(1, 3, size, size))
    if distributed.is_main():
        save_pruned(model, into)
        state.unlink(missing_ok=True)  # the finished checkpoint replaces it
    console.print(f"finished {label}: top-1 {metrics['top1']:.1f}% ({settings.epochs} epochs)")
    return {
        "params": stats["params"],
        "size_mb": stats["size_mb"],
        "macs": stats["macs"],
        "epochs": settings.epochs,
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "holdout_top1": history[-1].get("holdout_top1") if history else None,
        "train_seconds": round(sum(h["seconds"] for h in history), 3),
        "eval_seconds": round(time.perf_counter() - started, 3),
        "history": history,
        "settings": settings.fingerprint(),
    }


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def finished_sections(records: Sequence[Mapping[str, Any]], finished: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The report's "Finished networks" and "Time per stage" sections (Markdown lines)."""
    by_gen = {r["generation"]: r for r in records}
    generations = sum(r["train_seconds"] + r.get("screen_seconds", 0.0) for r in records if r["generation"] > 0)
    stages = [("ancestor (generation 0)", by_gen[0]["train_seconds"]), ("generations", generations)]
    out = []
    if finished:
        out += [
            "## Finished networks",
            "",
            "Each named network after the finishing stage (distillation from the ancestor, see the recipe's "
            "`finish`), beside its figures at selection. Held-out: the slice of the training set that chose "
            "everything; top-1: validation, only reported.",
            "",
            "| Model | Generation | Params | Size (MB) | Top-1 at selection (%) | Top-1 finished (%) "
            "| Held-out at selection (%) | Held-out finished (%) | Finish epochs | Finish (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key in sorted(finished, key=int):
            e = finished[key]
            out.append(
                f"| {' / '.join(e['names'])} | {e['generation']} | {e['params']:,} | {e['size_mb']:.2f} "
                f"| {_fmt(e['selected']['top1'])} | {_fmt(e['top1'])} | {_fmt(e['selected']['holdout_top1'])} "
                f"| {_fmt(e['holdout_top1'])} | {e['epochs']} | {e['train_seconds']:.0f} |"
            )
        out.append("")
        stages.append(("finishing", sum(e["train_seconds"] for e in finished.values())))
    out += ["## Time per stage", "", "| Stage | Training (s) |", "|---|---|"]
    out += [f"| {name} | {seconds:,.0f} |" for name, seconds in stages]
    out += [f"| total | {sum(s for _, s in stages):,.0f} |", "", "Training time only (evaluation aside).", ""]
    return out
