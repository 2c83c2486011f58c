"""Head-to-head: classic pruners on the same ancestor, data, schedule and training
budget as an evolutionary run.

Protocol (written into the comparison report): start from the run's trained
ancestor (``gen_00.pt``); for generation g = 1..G (G = the last SquishedNet), prune
the baseline to the parameter count of the run's generation g (within the
tolerance), then train it with the run's recipe for ``epochs_per_generation`` with
generation g's seed. Baselines prune every prunable layer by the same ratio (one
NNI ``config_list`` entry, the classifier excluded), as users of those pruners do.
Evaluation at the SquishedNet generations on the run's validation split.

Example:
    >>> from squish_plugin.baselines.pruners import METHODS
    >>> sorted(METHODS)[:2]
    ['nni-fpgm', 'nni-l1']
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..study.data import LoadedSplit, iterate_batches
from ..synthesis.resources import bisect
from ..synthesis.surgery import Surgeon, autograd_on

__all__ = ["METHODS", "METHOD_NAMES", "PruneContext", "prune_to"]


@dataclass(frozen=True)
class PruneContext:
    """What a baseline pruner may use: example inputs, training batches (Taylor), a seed."""

    example_inputs: torch.Tensor
    train_split: LoadedSplit | None
    seed: int
    batch_size: int = 32


def _nni_masks(model: nn.Module, name: str, ratio: float, ctx: PruneContext, classifier: str) -> dict:
    from nni.compression import pruning

    config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": ratio, "exclude_op_names": [classifier]}]
    if name == "TaylorPruner":
        pruner = _taylor(model, config, ctx)
    else:
        pruner = getattr(pruning, name)(model, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return masks


def _taylor(model: nn.Module, config: list[dict], ctx: PruneContext):
    """NNI's TaylorPruner, its first-order scores gathered over 20 training batches."""
    import nni
    import torch.nn.functional as F
    from nni.compression import TorchEvaluator
    from nni.compression.pruning import TaylorPruner

    if ctx.train_split is None:
        raise InvalidArgumentError("nni-taylor needs training data to score channels.")
    gen = torch.Generator().manual_seed(ctx.seed)
    batches = []
    for images, labels in iterate_batches(ctx.train_split, ctx.batch_size, train=True, generator=gen):
        batches.append((images, labels))
        if len(batches) == 20:
            break

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for step, batch in enumerate(batches):
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()
            if max_steps and step + 1 >= max_steps:
                break

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.0)  # scores only, no update
    evaluator = TorchEvaluator(training_func, optimizer, lambda b, m: F.cross_entropy(m(b[0]), b[1]))
    return TaylorPruner(model, config, evaluator, training_steps=len(batches))


def _nni(name: str) -> Callable:
    def prune(model: nn.Module, keep: float, ctx: PruneContext) -> nn.Module:
        from ..synthesis.nni import apply_masks

        surgeon = Surgeon(model, ctx.example_inputs)
        classifier = surgeon.names[surgeon.classifier]
        with torch.random.fork_rng(devices=[]), autograd_on():  # Taylor's scores need gradients
            torch.manual_seed(ctx.seed)
            masks = _nni_masks(model, name, 1.0 - keep, ctx, classifier)
        return apply_masks(model, masks, ctx.example_inputs)

    return prune


def _tp(kind: str) -> Callable:
    def prune(model: nn.Module, keep: float, ctx: PruneContext) -> nn.Module:
        import torch_pruning as tp

        surgeon = Surgeon(model, ctx.example_inputs)
        imp = tp.importance.GroupMagnitudeImportance(p=1) if kind == "magnitude" else tp.importance.RandomImportance()
        plan = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            for layer in surgeon.layers:
                scores = torch.as_tensor(imp(surgeon.group(layer))).flatten()
                n_keep = max(1, round(layer.width * keep))
                mask = torch.zeros(layer.width, dtype=torch.bool)
                mask[torch.sort(scores, descending=True, stable=True).indices[:n_keep]] = True
                plan[layer.name] = mask
        surgeon.prune(plan)
        return model

    return prune


#: method name -> pruning function ``(model, keep_fraction, ctx) -> pruned model``
METHODS: dict[str, Callable] = {
    "nni-l1": _nni("L1NormPruner"),
    "nni-l2": _nni("L2NormPruner"),
    "nni-fpgm": _nni("FPGMPruner"),
    "nni-taylor": _nni("TaylorPruner"),
    "tp-magnitude": _tp("magnitude"),
    "tp-random": _tp("random"),
}
#: the method names, in the order a comparison runs them by default
METHOD_NAMES = tuple(METHODS)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _uniform_keep(model: nn.Module, target: int, example_inputs: torch.Tensor) -> float:
    """The uniform kept fraction whose predicted parameter count is ``target``."""
    surgeon = Surgeon(model, example_inputs)
    rm = surgeon.resource_model("params")
    n = len(surgeon.layers)
    return bisect(lambda f: rm([f] * n), target, 0.0, 1.0, 40)


def prune_to(
    model: nn.Module, method: str, target_params: int, ctx: PruneContext, tolerance: float = 0.02
) -> nn.Module:
    """A physically pruned copy of ``model`` with ``method`` at ``target_params``
    (within ``tolerance``), found by a few corrected tries of the uniform ratio."""
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; choose from {sorted(METHODS)}.")
    keep = _uniform_keep(model, target_params, ctx.example_inputs)
    best = None
    for _ in range(6):
        child = METHODS[method](copy.deepcopy(model), keep, ctx)
        got = _params(child)
        err = got / target_params - 1
        if best is None or abs(err) < abs(best[0]):
            best = (err, child)
        if abs(err) <= tolerance / 4:
            break
        keep = min(1.0, keep * math.sqrt(target_params / got))  # params ~ keep^2
    if abs(best[0]) > tolerance:
        raise InvalidArgumentError(
            f"{method} could not reach {target_params:,} parameters within {tolerance:.0%} (closest {best[0]:+.1%})."
        )
    return best[1]
