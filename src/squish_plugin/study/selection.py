"""What a study's choices see: the held-out slice, the ancestor check, data-driven
strengths and the short fine-tune that screens offspring (never the validation split).

Example:
    >>> from squish_plugin.study.selection import HOLDOUT_FILE, ANCESTOR_FILE
    >>> HOLDOUT_FILE, ANCESTOR_FILE
    ('holdout.json', 'ancestor.json')
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..persistence import write_json_atomic
from ..synthesis.genetics import SCREEN_STREAM, derive_seed
from ..synthesis.strengths import DataStrengths
from . import distributed
from .data import LoadedSplit, iterate_batches, load_split
from .holdout import HeldOut, holdout_split, proxy_slice
from .recipe import Recipe

__all__ = ["ANCESTOR_FILE", "HOLDOUT_FILE", "checked_ancestor", "held_out", "data_importance", "screen_by_finetune"]

HOLDOUT_FILE = "holdout.json"
ANCESTOR_FILE = "ancestor.json"
Score = Callable[[nn.Module], dict[str, float]]


def held_out(recipe: Recipe, train_split: LoadedSplit, run_dir: Path) -> tuple[LoadedSplit, HeldOut | None]:
    """``(the images networks train on, the held-out slice or None)``; the slice is
    recorded in ``run_dir/holdout.json``, and a resumed run must find the same one.
    The held-out images are decoded as the validation images are (``eval_size``, the
    eval crop), so what the choices see is scored like what the tables report."""
    d = recipe.data
    if not d.holdout:
        return train_split, None
    rest, held = holdout_split(train_split, d.holdout, d.holdout_seed)
    as_val = load_split(
        d.root, d.train_split, d.eval_size, classes=list(train_split.classes), cache_dir=d.cache_dir, train=False
    )
    index = torch.tensor(held.indices, dtype=torch.long)
    if not torch.equal(as_val.labels[index], held.split.labels):
        raise InvalidArgumentError(
            f"the training images under '{d.root}' changed while the run read them; start again."
        )
    held = replace(held, split=LoadedSplit(as_val.images[index], as_val.labels[index], as_val.classes))
    path = Path(run_dir) / HOLDOUT_FILE
    if path.is_file():
        recorded = json.loads(path.read_text()).get("digest")
        if recorded != held.record()["digest"]:
            raise InvalidArgumentError(
                f"{path} records another held-out slice than the data gives now (digest {recorded}); "
                "the training images changed since the run started: start a new run."
            )
    elif distributed.is_main():
        write_json_atomic(path, held.record())
    return rest, held


def checked_ancestor(
    model: nn.Module, fine_tune: Callable[[], Any], score: Score | None, run_dir: Path
) -> dict[str, Any] | None:
    """Fine-tune the ancestor in place with ``fine_tune()``; with a held-out ``score``,
    keep the result only if its held-out top-1 is at least the untrained one's (else the
    untrained weights come back: generation 0 and the teacher never lose accuracy).
    The decision goes to ``run_dir/ancestor.json``."""
    if score is None:
        fine_tune()
        return None
    before_state = copy.deepcopy(model.state_dict())
    before = score(model)["top1"]
    fine_tune()
    after = score(model)["top1"]
    kept = "fine-tuned" if after >= before else "untrained"
    if kept == "untrained":
        model.load_state_dict(before_state)
    decision = {"holdout_top1_untrained": before, "holdout_top1_fine_tuned": after, "kept": kept}
    if distributed.is_main():
        write_json_atomic(Path(run_dir) / ANCESTOR_FILE, decision)
    return decision


def data_importance(recipe: Recipe, train_split: LoadedSplit) -> DataStrengths | None:
    """Data-driven strengths (``evolution.importance`` taylor or activation) measured on a
    fixed, evenly spaced sample of ``evolution.strength_images`` training images at the
    training crop (centre windows: no augmentation), or None for filter norms."""
    evo = recipe.evolution
    if evo.importance not in ("taylor", "activation"):
        return None
    sample = proxy_slice(train_split, evo.strength_images)
    crop = recipe.data.train_crop

    def batches():
        for x, y in iterate_batches(sample, recipe.train.batch_size, train=False):
            if crop and crop < x.shape[-1]:
                top = (x.shape[-1] - crop) // 2
                x = x[..., top : top + crop, top : top + crop]
            yield x, y

    return DataStrengths(batches, kind=evo.importance)


def screen_by_finetune(
    recipe: Recipe,
    train_split: LoadedSplit,
    score: Callable[[nn.Module], float],
    fine_tune: Callable[[nn.Module, Any, int, float], Any],
) -> Callable:
    """The cheap fitness of ``selection: finetune``: ``screen_steps`` training steps of
    the offspring in place (``fine_tune(child, ctx, seed, epochs)``), then its fitness on
    the held-out slice (``score``: top-1, or minus the KL to the ancestor). The winner keeps
    those steps and trains on."""
    per_epoch = max(1, math.ceil(len(train_split) / recipe.train.batch_size))
    epochs = recipe.evolution.screen_steps / per_epoch

    def fitness(child: nn.Module, ctx) -> float:
        fine_tune(child, ctx, derive_seed(ctx.seed, SCREEN_STREAM), epochs)
        return score(child)

    return fitness
