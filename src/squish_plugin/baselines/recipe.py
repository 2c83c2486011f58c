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
    run: str = Field(description="run directory of `squish-plugin run` to compare against")
    methods: list[Literal[METHOD_NAMES]] = list(METHOD_NAMES)  # type: ignore[valid-type]
    tolerance: float = Field(0.02, gt=0, le=0.1)
    distill: Literal["none", "run"] = Field(
        "none",
        description="baselines train with plain cross-entropy ('none') or the run's distillation ('run', "
        "rows named '<method>+kd')",
    )
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads (default: the run's train.threads)")
    extra_params: list[int] = Field(
        [], description="more comparison points: the run's first generation at or below each parameter count"
    )
    output: OutputSection = OutputSection()

    @field_validator("extra_params")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("must be positive parameter counts")
        return sorted(set(v), reverse=True)

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must list at least one method, each once")
        return v


def load_compare_recipe(path: str | Path, overrides: list[str] | None = None) -> CompareRecipe:
    """Read, override and validate a comparison recipe; a relative ``run`` is
    relative to the recipe file (or to the working directory when overridden)."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping.")
    if isinstance(data.get("run"), str) and not Path(data["run"]).is_absolute():
        data["run"] = str((path.parent / data["run"]).resolve())
    data = apply_overrides(data, overrides or [])
    if isinstance(data.get("run"), str):
        data["run"] = str(Path(data["run"]).expanduser().resolve())
    try:
        return CompareRecipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(recipe_sentence(exc, str(path))) from None
