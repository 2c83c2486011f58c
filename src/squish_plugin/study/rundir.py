"""A run directory's recipe: its name, the resolved ``recipe.yaml`` it was started with,
and the few changes a later command may record there (more generations, finishing).

Example:
    >>> from squish_plugin.study.rundir import timestamped_dir
    >>> timestamped_dir("runs", "demo").name.startswith("demo-")
    True
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from ..errors import InvalidArgumentError
from ..persistence import atomic_write_text
from . import distributed
from .engine import LINEAGE_FILE, read_lineage
from .finish_run import wanted_networks
from .recipe import Recipe, apply_overrides, resolve_paths, validate_recipe

__all__ = [
    "RECIPE_FILE",
    "clean_orphans",
    "extend_generations",
    "finish_recipe",
    "new_run_dir",
    "open_run_dir",
    "read_run_recipe",
    "record_recipe",
    "timestamped_dir",
]

RECIPE_FILE = "recipe.yaml"


def timestamped_dir(parent: str | Path, name: str) -> Path:
    """``<parent>/<name>-<YYYYmmdd-HHMMSS>``, never an existing folder (``-2``, ``-3``... when taken)."""
    base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def new_run_dir(recipe: Recipe) -> Path:
    """``<output.dir>/<name>-<YYYYmmdd-HHMMSS>``, never an existing folder."""
    return timestamped_dir(recipe.output.dir, recipe.name)


def read_run_recipe(run_dir: Path, overrides: list[str] | None = None) -> Recipe:
    """The resolved recipe a run directory was started with (for ``--resume``), with
    ``overrides`` applied: only ``evolution.generations=N``, to extend the run."""
    other = [item for item in overrides or [] if item.partition("=")[0].strip() != "evolution.generations"]
    if other:
        raise InvalidArgumentError(
            "--resume continues a run as it was recorded; only --set evolution.generations=N "
            f"(to extend a run) applies, not '{other[0]}'."
        )
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        raise InvalidArgumentError(f"'{run_dir}' is not a run directory: it has no {RECIPE_FILE}.")
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict):
        resolve_paths(data, Path(run_dir))  # a moved or committed run may hold relative paths
        data = apply_overrides(data, overrides or [])
    return validate_recipe(data, str(path))


def extend_generations(run_dir: Path, generations: int) -> None:
    """Record a resumed run's new generation count in its ``recipe.yaml``, leaving the
    rest of the file (e.g. relative data paths of a committed run) as it was."""
    path = Path(run_dir) / RECIPE_FILE
    if (Path(run_dir) / LINEAGE_FILE).is_file():
        held = read_lineage(run_dir)[-1]["generation"]
        if held > generations:
            raise InvalidArgumentError(
                f"'{run_dir}' already holds {held} generations; --set evolution.generations={generations} cannot "
                f"shorten it (give {held} or more, or start a new run)."
            )
    data = yaml.safe_load(path.read_text())
    if data["evolution"].get("generations") != generations:
        data["evolution"]["generations"] = generations
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def finish_recipe(run_dir: Path, overrides: list[str]) -> Recipe:
    """A run's recipe with ``finish.*`` (and ``squishednets.extra_params``: more named networks)
    overrides applied and recorded in its ``recipe.yaml``."""
    keys = [item.partition("=")[0].strip() for item in overrides]
    other = [k for k in keys if not k.startswith("finish.") and k != "squishednets.extra_params"]
    if other:
        raise InvalidArgumentError(
            f"finish takes only --set finish.<key>=value and squishednets.extra_params overrides, not '{other[0]}'."
        )
    records = read_lineage(run_dir)  # a run directory with generations, else one sentence
    recipe = read_run_recipe(run_dir)
    if overrides:
        recipe = validate_recipe(apply_overrides(recipe.model_dump(), overrides), str(run_dir / RECIPE_FILE))
    if recipe.finish.epochs == 0:  # checked before anything is recorded
        raise InvalidArgumentError(
            f"the recipe of '{run_dir}' has finish.epochs 0 (no finishing stage); give e.g. --set finish.epochs=10."
        )
    wanted_networks(records, recipe)  # a finish.networks name the run lacks: refused before it is recorded
    if overrides:
        data = apply_overrides(yaml.safe_load((run_dir / RECIPE_FILE).read_text()), overrides)
        atomic_write_text(run_dir / RECIPE_FILE, yaml.safe_dump(data, sort_keys=False))
    return recipe


def open_run_dir(recipe: Recipe, run_dir: Path | None, resume: bool) -> Path:
    """The run directory every rank agrees on (created by rank 0 for a new run)."""
    run_dir = Path(distributed.broadcast_object(str(run_dir) if run_dir else str(new_run_dir(recipe))))
    if resume and not (run_dir / RECIPE_FILE).is_file():
        raise InvalidArgumentError(f"'{run_dir}' is not a run directory to resume: it has no {RECIPE_FILE}.")
    if distributed.is_main() and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def record_recipe(recipe: Recipe, run_dir: Path, resume: bool) -> None:
    """Rank 0, holding the run's lock, records the recipe (a resumed run only its new generation count)."""
    if not distributed.is_main():
        return
    if resume:
        clean_orphans(run_dir)
        extend_generations(run_dir, recipe.evolution.generations)
    else:
        atomic_write_text(run_dir / RECIPE_FILE, yaml.safe_dump(recipe.model_dump(), sort_keys=False))


def clean_orphans(run_dir: Path) -> list[Path]:
    """Remove what killed writes left in ``run_dir`` (temp files of atomic writes, an export's
    staging folder): called only by the run's lock holder, so no writer is cut short. Returns
    what was removed."""
    removed = []
    for pattern in (".*.tmp", "checkpoints/.*.tmp", "onnx/.*.tmp", "bench/.*.tmp"):
        for path in sorted(Path(run_dir).glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
