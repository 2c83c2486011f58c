"""The recipe's ancestor network: trained weights for the study, or its structure alone
(random weights, no download) where only its shape matters, as for a latency table.

Example:
    >>> from squish_plugin.study.ancestor import recipe_ancestor
    >>> from squish_plugin.study.recipe import validate_recipe
    >>> recipe = validate_recipe({"name": "doc", "data": {"root": "photos"}})
    >>> net = recipe_ancestor(recipe, ("a", "b", "c"), structure_only=True)
    >>> net.classifier[1].out_channels
    3
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InvalidArgumentError
from ..models import squeezenet1_1_ancestor
from ..persistence import load_pruned
from ..zoo import zoo_model
from .checks import head_problem, wnid_head
from .recipe import Recipe

__all__ = ["recipe_ancestor"]


def recipe_ancestor(recipe: Recipe, classes: Sequence[str], *, structure_only: bool = False) -> torch.nn.Module:
    """``model.init`` (checked against the number of ``classes``), else ``model.arch`` for
    ``classes``: SqueezeNet v1.1's ancestor with the recipe's weights and head, or a zoo
    classifier. ``structure_only``: random weights and head (nothing downloaded)."""
    m = recipe.model
    num_classes = m.num_classes or len(classes)
    if num_classes != len(classes):
        raise InvalidArgumentError(f"model.num_classes is {num_classes} but the data has {len(classes)} classes.")
    if m.init is not None:
        model = load_pruned(m.init)
        out = [mod for mod in model.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))][-1]
        if out.weight.shape[0] != num_classes:
            raise InvalidArgumentError(
                f"model.init '{m.init}' has {out.weight.shape[0]} outputs but the data has {num_classes} classes."
            )
        return model
    if m.arch != "squeezenet1_1_ancestor":
        return zoo_model(m.arch, num_classes, None if structure_only else m.weights, seed=recipe.seed)
    head = None
    if not structure_only and (m.head == "pretrained" or (m.head == "auto" and wnid_head(recipe, classes))):
        problem = head_problem(recipe, classes)
        if problem:
            raise InvalidArgumentError(problem)
        head = list(classes)
    weights = None if structure_only or m.weights == "none" else m.weights
    return squeezenet1_1_ancestor(num_classes, weights=weights, head=head, seed=recipe.seed)
