"""What a recipe's data must satisfy, checked without training: the folders exist (a warning
at ``--dry-run``: the data may live on another machine), and when they do, their classes fit the
model (an error there: one sentence naming the fix)."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InvalidArgumentError
from .recipe import Recipe

__all__ = [
    "ancestor_lr",
    "check_data",
    "class_names",
    "data_problems",
    "fit_problems",
    "head_problem",
    "resolution_warning",
    "size_warnings",
    "wnid_head",
]

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


def wnid_head(recipe: Recipe, classes: list[str] | tuple[str, ...]) -> bool:
    """Whether ``model.head: auto`` starts from the pretrained conv10 rows: the paper's ancestor
    with ImageNet weights, and every class folder an ImageNet wnid."""
    m = recipe.model
    pretrained = m.weights not in (None, "none") and m.arch == "squeezenet1_1_ancestor"
    return pretrained and bool(classes) and all(_WNID.match(c) for c in classes)


def ancestor_lr(recipe: Recipe) -> float:
    """The ancestor's fine-tuning rate: ``train.ancestor_lr``, else 0.03 x ``train.lr`` for a
    pretrained ancestor (measured on the held-out slice: 0.0003 beside offspring at 0.01; a
    pretrained, BatchNorm-free SqueezeNet loses accuracy at the offspring's rate) and ``lr``
    for one from random weights."""
    t, m = recipe.train, recipe.model
    if t.ancestor_lr is not None:
        return t.ancestor_lr
    pretrained = m.init is not None or m.weights not in (None, "none")
    return 0.03 * t.lr if pretrained else t.lr


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


def _last_map(model, size: int) -> tuple[int, int] | None:
    """The spatial size of the last convolution's output on one ``size`` x ``size`` image."""
    import torch

    from ..synthesis.surgery import EvalMode

    seen: list[tuple[int, int]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        with EvalMode(model), torch.no_grad():  # the caller's model keeps its own training flags
            model(torch.zeros(1, 3, size, size))
    except Exception:  # too small to run at all: said by the caller
        return (0, 0)
    finally:
        for h in hooks:
            h.remove()
    return seen[-1] if seen else None


def resolution_warning(recipe: Recipe, model) -> str | None:
    """One sentence when the training images are so small that the model's last convolution sees
    1x1 maps (SqueezeNet at 32 px stayed at chance), naming the smallest size that gives it 2x2."""
    size = recipe.data.train_crop or recipe.data.train_size
    last = _last_map(model, size)
    if last is None or min(last) >= 2:
        return None
    better = next((s for s in range(size + 16, 1025, 16) if min(_last_map(model, s) or (0, 0)) >= 2), None)
    fix = f"its maps reach 2x2 from {better} px (data.train_size)" if better else "use a larger data.train_size"
    return (
        f"at {size} px the model's last convolution sees {last[0]}x{last[1]} feature maps, too small to learn "
        f"from (SqueezeNet stays at chance there): {fix}."
    )


def size_warnings(recipe: Recipe) -> list[str]:
    """:func:`resolution_warning` for the recipe's architecture, built with random weights (no
    download, no data needed): what ``--dry-run`` prints."""
    from ..models import squeezenet1_1_ancestor
    from ..zoo import zoo_model

    classes = recipe.model.num_classes or len(recipe.data.classes or []) or 10
    arch = recipe.model.arch
    model = (
        squeezenet1_1_ancestor(classes, weights=None)
        if arch == "squeezenet1_1_ancestor"
        else zoo_model(arch, classes, None)
    )
    warning = resolution_warning(recipe, model)
    return [warning] if warning else []
