"""What a recipe's data must satisfy, checked without training: the folders exist (a warning
at ``--dry-run``: the data may live on another machine), and when they do, their classes fit the
model (an error there: one sentence naming the fix)."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InvalidArgumentError
from .recipe import Recipe

__all__ = ["check_data", "class_names", "data_problems", "fit_problems", "head_problem"]

_WNID = re.compile(r"^n\d{8}$")


def data_problems(recipe: Recipe) -> list[str]:
    """Cheap checks (no decoding) that the recipe's data folders and files exist: one
    sentence per problem, naming the recipe's own paths."""
    init = recipe.model.init
    if init is not None and not Path(init).is_file():
        return [f"model.init '{init}' does not exist; give a checkpoint written by squish-plugin."]
    root = Path(recipe.data.root)
    if not root.is_dir():
        return [
            f"data root '{root}' does not exist; set data.root to this recipe's dataset "
            f"(e.g. --set data.root=/path/to/{root.name}), laid out as <root>/<split>/<class>/<images>."
        ]
    return [
        f"data root '{root}' has no '{split}' folder; expected {root}/{split}/<class>/<image files>."
        for split in (recipe.data.train_split, recipe.data.val_split)
        if not (root / split).is_dir()
    ]


def check_data(recipe: Recipe) -> None:
    """Raise the first of :func:`data_problems`, if any."""
    problems = data_problems(recipe)
    if problems:
        raise InvalidArgumentError(problems[0])


def class_names(recipe: Recipe) -> list[str]:
    """The classes the study trains on: ``data.classes``, else the training split's folders."""
    if recipe.data.classes:
        return list(recipe.data.classes)
    split = Path(recipe.data.root) / recipe.data.train_split
    return sorted(p.name for p in split.iterdir() if p.is_dir()) if split.is_dir() else []


def head_problem(recipe: Recipe, classes: list[str] | tuple[str, ...]) -> str | None:
    """Why ``model.head: pretrained`` cannot start from these classes, or None."""
    if recipe.model.head != "pretrained":
        return None
    bad = [c for c in classes if not _WNID.match(c)]
    if bad:
        return (
            f"model.head 'pretrained' needs ImageNet wnid class folders; '{bad[0]}' is not one: "
            "write model.head: random for other classes."
        )
    return None


def fit_problems(recipe: Recipe) -> list[str]:
    """With the data present: whether its classes fit the model (``--dry-run`` refuses these)."""
    if data_problems(recipe):
        return []
    classes = class_names(recipe)
    problems = [p for p in [head_problem(recipe, classes)] if p]
    wanted = recipe.model.num_classes
    if wanted is not None and classes and wanted != len(classes):
        problems.append(f"model.num_classes is {wanted} but the data has {len(classes)} classes.")
    return problems
