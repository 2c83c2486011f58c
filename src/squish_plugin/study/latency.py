"""A study's latency table: measured on the recipe's target when missing, where it is
cached, the copy every run keeps, and the ``round_to`` it resolves (``resource: latency``,
``round_to: auto``).

The table is measured on the target once (``squish-plugin bench table RECIPE``; a study
does it itself when the file is missing, on rank 0 alone under torchrun) and cached per
target and model; a run copies the table it starts with into ``latency_table.json`` and a
resumed run reads that copy, so a lineage is drawn against one table from its first
generation to its last. The measuring itself is :mod:`squish_plugin.deploy.latency`'s;
the timers come in as :class:`TableTimers` (the recipe's target by default).

Example:
    >>> from squish_plugin.study.latency import RUN_TABLE_FILE
    >>> RUN_TABLE_FILE
    'latency_table.json'
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..deploy.backends import MachineLoad, cpu_name
from ..deploy.latency import (
    ROUND_TO_CANDIDATES,
    calibration_members,
    calibration_networks,
    measure_table,
    round_to_from_times,
    time_networks,
)
from ..deploy.latency.calibration import fit_whole
from ..deploy.latency.timers import LayerTimer, onnxruntime_layer_timer, pytorch_layer_timer, target_of
from ..errors import InvalidArgumentError
from ..persistence import write_json_atomic
from ..synthesis.latency import LatencyTable, load_table
from . import distributed
from .ancestor import recipe_ancestor
from .recipe import Recipe

__all__ = [
    "RUN_TABLE_FILE",
    "TableProgress",
    "TableTimers",
    "ensure_table",
    "needs_table",
    "resolved_round_to",
    "run_table",
    "table_path",
    "target_timers",
]

RUN_TABLE_FILE = "latency_table.json"


def needs_table(recipe: Recipe) -> bool:
    """Whether the study reads a latency table (a latency budget or ``round_to: auto``)."""
    evo = recipe.evolution
    return (evo.resource == "latency" and evo.mode == "budget") or evo.round_to == "auto"


def table_path(recipe: Recipe) -> Path:
    """``evolution.latency.table``, or the cache's file for this target (backend, threads,
    batch, this machine) and model (architecture, classes, input size, rounding)."""
    lat = recipe.evolution.latency
    if lat.table is not None:
        return Path(lat.table).expanduser()
    machine = [platform.node(), platform.machine(), os.cpu_count()]
    model = [recipe.model.arch, recipe.model.num_classes, recipe.data.classes, recipe.data.eval_size]
    key = json.dumps([lat.backend, lat.threads, lat.batch, machine, model, recipe.evolution.round_to], default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = os.environ.get("SQUISH_CACHE") or Path.home() / ".cache" / "squish-plugin"
    return Path(cache).expanduser() / "latency" / f"{lat.backend}-b{lat.batch}-t{lat.threads}-{digest}.json"


def run_table(
    recipe: Recipe, run_dir: Path, *, timers: TableTimers | None = None, echo: Callable[[str], Any] = print
) -> LatencyTable | None:
    """The table this run draws against: its own copy if it has one (a resume), else the
    recipe's table (measured with ``timers`` first if missing: :func:`ensure_table`), copied
    into the run. ``None`` when the recipe needs none. Under torchrun rank 0 alone measures,
    reads and writes it and every rank gets rank 0's table (a cache keyed by host would give
    ranks on other nodes other tables, hence other offspring)."""
    if not needs_table(recipe):
        return None
    payload = None
    if distributed.is_main():
        try:
            payload = ("table", _main_table(recipe, Path(run_dir), timers, echo).to_dict())
        except InvalidArgumentError as exc:
            payload = ("error", str(exc))
    kind, value = distributed.broadcast_object(payload)
    if kind == "error":
        raise InvalidArgumentError(value)
    return LatencyTable.from_dict(value)


def _main_table(recipe: Recipe, run_dir: Path, timers: TableTimers | None, echo: Callable[[str], Any]) -> LatencyTable:
    own = run_dir / RUN_TABLE_FILE
    if own.is_file():
        return load_table(own)
    path = ensure_table(recipe, echo=echo, timers=timers)
    table = load_table(path)
    if recipe.evolution.round_to == "auto" and table.round_to is None:
        raise InvalidArgumentError(f"round_to 'auto' needs a table that measured it; '{path}' did not.")
    write_json_atomic(own, table.to_dict())
    return table


def resolved_round_to(recipe: Recipe, table: LatencyTable | None) -> int | None:
    """``evolution.round_to`` with ``auto`` replaced by the table's measured multiple."""
    if recipe.evolution.round_to != "auto":
        return recipe.evolution.round_to
    if table is None or table.round_to is None:
        raise InvalidArgumentError("round_to 'auto' needs a latency table that measured it.")
    return table.round_to


def _table_device(path: Path) -> str | None:
    """The CPU a cached table was measured on (``None`` if it does not say or cannot be read)."""
    try:
        return load_table(path).target.get("device")
    except InvalidArgumentError:
        return None


def _recipe_model(recipe: Recipe) -> nn.Module:
    """The study's ancestor, structure only (a table needs no trained weights), for the
    recipe's classes: counted from the training folder when the recipe names none."""
    classes = list(recipe.data.classes or [])
    count = recipe.model.num_classes or len(classes)
    if not count:
        split = Path(recipe.data.root) / recipe.data.train_split
        if not split.is_dir():
            raise InvalidArgumentError(f"data folder '{split}' does not exist (the table needs the number of classes).")
        count = sum(1 for p in split.iterdir() if p.is_dir())
    return recipe_ancestor(recipe, classes or [str(i) for i in range(count)], structure_only=True)


@dataclass(frozen=True)
class TableTimers:
    """How a table is measured: ``layer(geometry, cin, cout) -> ms`` for one layer (with its
    ReLU) and ``networks({name: net}) -> {name: ms}`` for whole networks, timed together."""

    layer: LayerTimer
    networks: Callable[[Mapping[str, nn.Module]], dict[str, float]]


#: ``progress(stage, done, total)``: how far a table's measurement has come
TableProgress = Callable[[str, int, int], Any]


def target_timers(recipe: Recipe, progress: TableProgress | None = None) -> TableTimers:
    """The recipe's own target: ONNX Runtime's CPU provider or eager PyTorch, at its threads
    and batch, whole networks at its evaluation size (``progress`` hears of each network timed)."""
    lat, size = recipe.evolution.latency, recipe.data.eval_size
    make = onnxruntime_layer_timer if lat.backend == "onnxruntime" else pytorch_layer_timer
    told = None if progress is None else (lambda done, total: progress("whole networks", done, total))
    return TableTimers(
        make(batch=lat.batch, threads=lat.threads),
        lambda nets: time_networks(nets, lat.backend, batch=lat.batch, threads=lat.threads, size=size, progress=told),
    )


def _measure(
    model: nn.Module,
    timers: TableTimers,
    inputs: torch.Tensor,
    recipe: Recipe,
    target: Mapping[str, Any],
    echo: Callable[[str], Any],
    progress: TableProgress | None,
) -> LatencyTable:
    """The calibration set (with ``round_to: auto``'s candidates among it) timed whole in one
    call, then the grid on the chosen lattice, then one fit over the set's members."""
    round_to = recipe.evolution.round_to
    auto = round_to == "auto"
    nets = calibration_networks(model, ROUND_TO_CANDIDATES if auto else (round_to or 1), inputs)
    echo(f"timing {len(nets)} whole networks (the calibration set{', round_to candidates among them' if auto else ''})")
    measured = timers.networks(nets)
    notes = {}
    if auto:
        round_to, figures = round_to_from_times(measured, ROUND_TO_CANDIDATES, nets)
        notes = {"round_to_figures": figures}
        echo(f"round_to auto: {round_to} (ms per candidate: {figures['ms']})")
    lat = recipe.evolution.latency
    echo(f"measuring the latency table on {lat.backend} ({lat.threads} threads, batch {lat.batch}) ...")
    told = None if progress is None else (lambda done, total: progress("layer timings", done, total))
    table = measure_table(
        model,
        timers.layer,
        example_inputs=inputs,
        step=round_to,
        target=target,
        round_to=round_to,
        notes=notes,
        progress=told,
    )
    members = calibration_members(nets, round_to or 1)
    return fit_whole(table, {n: nets[n] for n in members}, {n: measured[n] for n in members})


def ensure_table(
    recipe: Recipe,
    *,
    echo: Callable[[str], Any] = print,
    force: bool = False,
    timers: TableTimers | None = None,
    progress: TableProgress | None = None,
) -> Path | None:
    """Measure the latency table ``recipe`` reads (``resource: latency`` or ``round_to:
    auto``) with ``timers`` (default: :func:`target_timers`, the recipe's backend) unless the
    file is there, measured on this CPU; return its path, ``None`` when it needs none.
    ``progress(stage, done, total)`` hears how far the measurement has come."""
    if not needs_table(recipe):
        return None
    path, lat = table_path(recipe), recipe.evolution.latency
    if path.is_file() and not force:
        if lat.table is not None or lat.backend == "file":
            return path  # the user's own table: a target of their choosing
        measured_on = _table_device(path)
        if measured_on in (None, cpu_name()):
            return path
        echo(f"the cached latency table was measured on {measured_on}, this machine is {cpu_name()}: measuring again.")
    if lat.backend == "file":
        raise InvalidArgumentError(f"latency table '{path}' does not exist (evolution.latency.backend is 'file').")
    model = _recipe_model(recipe).eval()
    inputs = torch.zeros(1, 3, recipe.data.eval_size, recipe.data.eval_size)
    target = {**target_of(lat.backend, batch=lat.batch, threads=lat.threads), "input_size": recipe.data.eval_size}
    with MachineLoad() as load:  # the table is only as good as the machine was idle
        timers = timers or target_timers(recipe, progress)
        table = _measure(model, timers, inputs, recipe, target, echo, progress)
    table = replace(table, target={**table.target, "machine_load": load.record()})
    if load.record()["busy"]:
        echo(
            f"warning: other processes held {load.record()['other_processes_cores']} of {load.record()['cores']} "
            "cores while the table was measured: measure again (--force) on an idle machine."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, table.to_dict())
    fits = list(table.notes["calibration"].values())
    worst = max(abs(row["error"]) for row in fits)
    echo(
        f"latency table: {path} ({table.notes['timed_layers']} layer timings; whole = {table.scale:.3f} x sum "
        f"{table.offset_ms:+.2f} ms, layers off the {table.round_to or 1}-lattice x {table.off_lattice:.2f}; "
        f"worst error on its {len(fits)} calibration networks {worst:.1%})"
    )
    return path
