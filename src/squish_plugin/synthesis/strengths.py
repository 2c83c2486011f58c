"""Data-driven cluster strengths: what a channel does on real images, not only how
large its filter is, as the strength ``s_c`` inside the paper's genetic encoding.

As the pruner's (and ``evolve``'s) ``importance``: :class:`DataStrengths`, measured on the
model as it is whenever its offspring are drawn. ``"taylor"`` is the first-order Taylor
estimate of the loss change when a channel is removed (Molchanov et al., ICLR 2017): the
mean over images of ``|sum over positions of a * dL/da|`` at the Conv/Linear output ``a``;
``"activation"`` is the mean absolute output (an activation-based strength). Both are averaged over the batches given.

Example:
    >>> import torch, torchvision
    >>> from squish_plugin.synthesis.strengths import data_strengths
    >>> model = torchvision.models.squeezenet1_1(num_classes=10)
    >>> batch = (torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3]))
    >>> scores = data_strengths(model, [batch], kind="taylor")
    >>> scores["features.0"].shape
    torch.Size([64])
    >>> from squish_plugin import EvolutionarySynthesisPruner
    >>> pruner = EvolutionarySynthesisPruner(model, importance=DataStrengths(lambda: [batch]), env=0.9)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from .surgery import autograd_on

__all__ = ["STRENGTH_KINDS", "DataStrengths", "data_strengths"]

STRENGTH_KINDS = ("taylor", "activation")


@dataclass(frozen=True)
class DataStrengths:
    """Cluster strengths measured on images, as an ``importance``: ``batches()`` gives a fresh
    iterable of ``(images, labels)`` each time the strengths are measured (the same images
    every time: a fixed sample), ``kind`` is ``"taylor"`` or ``"activation"``."""

    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    kind: str = "taylor"
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy

    def __post_init__(self) -> None:
        if self.kind not in STRENGTH_KINDS:
            raise InvalidArgumentError(f"data-driven strength must be one of {STRENGTH_KINDS}, got {self.kind!r}.")
        if not callable(self.batches):
            raise InvalidArgumentError("DataStrengths needs batches: a callable returning (images, labels) batches.")

    def measure(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``{module name: one strength per output channel}`` of ``model`` now."""
        return data_strengths(model, self.batches(), kind=self.kind, loss_fn=self.loss_fn)


def data_strengths(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    kind: str = "taylor",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict[str, torch.Tensor]:
    """``{module name: one strength per output channel}`` for every Conv/Linear of
    ``model``, from ``batches`` of ``(images, labels)``. The model runs in eval mode
    (no dropout: the same batches give the same strengths) and is left unchanged
    (its gradients are cleared)."""
    if kind not in STRENGTH_KINDS:
        raise InvalidArgumentError(f"data-driven strength must be one of {STRENGTH_KINDS}, got {kind!r}.")
    named = {m: n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    totals: dict[str, torch.Tensor] = {}
    outputs: list[tuple[str, torch.Tensor]] = []

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        outputs.append((named[module], output))
        return output.clone()  # an in-place ReLU downstream then leaves `output` as it was

    was_training = model.training
    handles = [m.register_forward_hook(hook) for m in named]
    images = 0
    try:
        model.eval()
        with autograd_on():
            for x, y in batches:
                outputs.clear()
                out = model(x)
                values = [a for _, a in outputs]
                grads = torch.autograd.grad(loss_fn(out, y), values) if kind == "taylor" else values
                for (name, a), g in zip(outputs, grads):
                    score = _channel_score(a.detach(), g.detach(), kind)
                    totals[name] = totals.get(name, 0) + score
                images += int(x.shape[0])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    if not images:
        raise InvalidArgumentError("data-driven strengths need at least one batch of images.")
    return {name: (total / images).float() for name, total in sorted(totals.items())}


def _channel_score(a: torch.Tensor, g: torch.Tensor, kind: str) -> torch.Tensor:
    """Per image, one score per channel (dim 1), summed over the images of the batch."""
    if kind == "taylor":
        per_image = (a * g).flatten(2).sum(2) if a.dim() > 2 else a * g
        # scale: the loss is a batch mean, so dL/da carries 1/B; undo it
        return (per_image.abs() * a.shape[0]).sum(0).double()
    per_image = a.abs().flatten(2).mean(2) if a.dim() > 2 else a.abs()
    return per_image.sum(0).double()
