"""A study's latency table: where it is cached, the copy every run keeps, and the
``round_to`` it resolves (``resource: latency``, ``round_to: auto``).

The table is measured on the target once (``squish-plugin bench table RECIPE``; ``run``
does it itself when the file is missing) and cached per target and model; a run copies
the table it starts with into ``latency_table.json`` and a resumed run reads that copy, so
a lineage is drawn against one table from its first generation to its last.

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
from pathlib import Path

from ..errors import InvalidArgumentError
from ..persistence import write_json_atomic
from ..synthesis.latency import LatencyTable, load_table
from . import distributed
from .recipe import Recipe

__all__ = ["RUN_TABLE_FILE", "needs_table", "resolved_round_to", "run_table", "table_path"]

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


def run_table(recipe: Recipe, run_dir: Path) -> LatencyTable | None:
    """The table this run draws against: its own copy if it has one (a resume), else the
    recipe's table, copied into the run. ``None`` when the recipe needs none. Under torchrun
    rank 0 alone reads and writes it and every rank gets rank 0's table (a cache keyed by host
    would give ranks on other nodes other tables, hence other offspring)."""
    if not needs_table(recipe):
        return None
    payload = None
    if distributed.is_main():
        try:
            payload = ("table", _main_table(recipe, Path(run_dir)).to_dict())
        except InvalidArgumentError as exc:
            payload = ("error", str(exc))
    kind, value = distributed.broadcast_object(payload)
    if kind == "error":
        raise InvalidArgumentError(value)
    return LatencyTable.from_dict(value)


def _main_table(recipe: Recipe, run_dir: Path) -> LatencyTable:
    own = run_dir / RUN_TABLE_FILE
    if own.is_file():
        return load_table(own)
    path = table_path(recipe)
    if not path.is_file():
        raise InvalidArgumentError(
            f"latency table '{path}' does not exist: `squish-plugin bench table RECIPE` measures it "
            "(`squish-plugin run` does so itself), or set evolution.latency.table to a collected one."
        )
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
