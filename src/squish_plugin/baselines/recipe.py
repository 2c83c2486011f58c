"""The ``compare`` command's recipe: which classic pruners, against which evolutionary run.

Example:
    >>> from squish_plugin.baselines.recipe import CompareRecipe
    >>> CompareRecipe.model_validate({"name": "c", "run": "runs/a"}).methods[0]
    'nni-l1'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from ..study.recipe import (
    NAME_PATTERN,
    OutputSection,
    ParameterCounts,
    RecipeError,
    RecipeSection,
    apply_overrides,
    read_yaml,
    recipe_sentence,
)
from .pruners import METHOD_NAMES

__all__ = ["CompareRecipe", "load_compare_recipe"]


class CompareRecipe(RecipeSection):
    """A head-to-head against classic pruners on an evolutionary run's own schedule."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    run: str | list[str] = Field(
        description="run directory of `squish-plugin run` to compare against, or one per seed (a list): every "
        "baseline then runs once per seed, on that run's schedule, seed and held-out slice"
    )
    methods: list[Literal[METHOD_NAMES]] = list(METHOD_NAMES)  # type: ignore[valid-type]
    tolerance: float = Field(0.02, gt=0, le=0.1)
    distill: Literal["none", "run", "both"] = Field(
        "none",
        description="baselines train with plain cross-entropy ('none'), the run's distillation ('run', "
        "rows named '<method>+kd'), or each method both ways ('both')",
    )
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads (default: the run's train.threads)")
    extra_params: ParameterCounts = Field(
        [], description="more comparison points: the run's first generation at or below each parameter count"
    )
    finish: bool = Field(
        False,
        description="give the best distilled baseline (chosen on the held-out slice, at selection) the runs' own "
        "finishing stage (each run's `finish` section) at finish_nets; the runs' own networks are finished too",
    )
    scratch: bool = Field(
        False,
        description="the control of every pruning paper: the evolutionary widths at finish_nets from random "
        "initialisation, trained for the same total epochs with the same distillation and schedule",
    )
    scratch_lr: float | None = Field(
        None,
        gt=0,
        le=1,
        description="the scratch control's learning rate (default: the runs' finishing lr, chosen for inherited "
        "weights); from random weights a network without BatchNorm may need a lower one: choose it on the "
        "held-out slice (benchmarks/scratch_lr.py)",
    )
    finish_nets: list[str] = Field(
        ["SquishedNet-1", "SquishedNet-4", "10x"],
        description="the named networks (SquishedNet-k, or an extra_params point by its name, e.g. '10x') "
        "where the baseline and scratch are finished",
    )
    output: OutputSection = OutputSection()

    def run_dirs(self) -> list[Path]:
        """The compared runs, one per seed."""
        return [Path(r) for r in ([self.run] if isinstance(self.run, str) else self.run)]

    @field_validator("run")
    @classmethod
    def _some_run(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("must name at least one run directory, each once")
        return v

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must list at least one method, each once")
        return v


def _resolve_runs(run: object, base: Path) -> object:
    """A run path (or each of a list) relative to ``base``; anything else as given."""
    if isinstance(run, str):
        return str((base / Path(run).expanduser()).resolve())
    if isinstance(run, list) and all(isinstance(r, str) for r in run):
        return [str((base / Path(r).expanduser()).resolve()) for r in run]
    return run


def load_compare_recipe(path: str | Path, overrides: list[str] | None = None) -> CompareRecipe:
    """Read, override and validate a comparison recipe; a relative ``run`` is
    relative to the recipe file (or to the working directory when overridden)."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping.")
    data["run"] = _resolve_runs(data.get("run"), path.parent)
    data = apply_overrides(data, overrides or [])
    data["run"] = _resolve_runs(data.get("run"), Path.cwd())
    try:
        return CompareRecipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(recipe_sentence(exc, str(path))) from None
