"""Training and evaluation loops for the study (CPU-friendly, seeded).

Example:
    >>> from squish_plugin.training import TrainSettings
    >>> TrainSettings().optimizer
    'sgd'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .data import LoadedSplit, iterate_batches

__all__ = ["TrainSettings", "evaluate", "train"]

StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and schedule of one training phase (see the recipe's ``train``)."""

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    warmup_steps: int = 0
    grad_clip: float | None = 5.0
    label_smoothing: float = 0.0
    channels_last: bool = True
    crop: int | None = None
    distill_alpha: float = 0.7
    distill_temperature: float = 4.0
    device: str = "cpu"
    deterministic: bool = True


def _optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.momentum > 0)


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up (calms the large gradients right after a pruning), then cosine to 0."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def train(
    model: nn.Module,
    split: LoadedSplit,
    settings: TrainSettings,
    *,
    epochs: float,
    seed: int,
    on_step: StepCallback | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` (fractions allowed) passes over ``split``;
    batch order and augmentation come from ``seed`` alone.

    With a ``teacher`` (e.g. the parent or the trained ancestor) the loss is
    knowledge distillation (Hinton et al. 2015): ``(1 - a) * CE + a * T^2 * KL`` between
    the teacher's and the student's softened outputs, ``a = settings.distill_alpha``,
    ``T = settings.distill_temperature``; the teacher stays frozen in eval mode.

    The model trains on ``settings.device`` (``cpu``, ``cuda`` or ``auto``) and comes back
    to the device it was on; on CUDA, ``settings.deterministic`` (default) selects
    deterministic cuDNN algorithms so the same seed gives the same weights.
    Under torch.distributed (torchrun) it trains data-parallel:
    wrapped in DistributedDataParallel, each rank takes its ``1/world`` part of every batch
    of ``settings.batch_size`` (the global batch, so steps and learning rate are those of
    one process), and every rank must call with the same ``seed``."""
    steps_per_epoch = math.ceil(len(split.labels) / settings.batch_size)
    total = math.ceil(epochs * steps_per_epoch)
    if total <= 0:
        return {"steps": 0, "loss": float("nan")}
    device = distributed.device_for(settings.device)
    home = _device_of(model)
    fmt = torch.channels_last if settings.channels_last else torch.preserve_format
    model.to(device=device, memory_format=fmt)
    model.train()
    net: nn.Module = model
    world = distributed.world_size()
    shard = (distributed.rank(), world) if world > 1 else None
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = _optimizer(model, settings)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _schedule(i, total, settings.warmup_steps))
    teacher_home = None
    if teacher is not None:
        teacher_home = _device_of(teacher)
        teacher.eval()
        teacher.to(device=device, memory_format=fmt)
    gen = torch.Generator().manual_seed(seed)
    step, running = 0, 0.0
    cudnn = _CudnnDeterminism(settings.deterministic and device.type == "cuda")
    try:
        while step < total:
            for images, labels in iterate_batches(
                split, settings.batch_size, train=True, generator=gen, channels_last=settings.channels_last,
                crop=settings.crop, shard=shard,
            ):
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                logits = net(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
                if teacher is not None:
                    loss = _distill(loss, logits, teacher, images, settings)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if settings.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                opt.step()
                sched.step()
                step += 1
                running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
                if on_step:
                    on_step(step, total, running)
                if step >= total:
                    break
    finally:
        cudnn.restore()
        del net
        model.to(home)
        if teacher is not None:
            teacher.to(teacher_home)
    return {"steps": step, "loss": running}


class _CudnnDeterminism:
    """On CUDA, deterministic cuDNN algorithms (and no autotuning) while training, so
    that the same seed gives the same weights and ``--resume`` replays a run exactly;
    the previous flags come back afterwards."""

    def __init__(self, on: bool) -> None:
        self.saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) if on else None
        if on:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

    def restore(self) -> None:
        if self.saved is not None:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.saved


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _distill(ce: torch.Tensor, logits: torch.Tensor, teacher: nn.Module, images: torch.Tensor,
             s: TrainSettings) -> torch.Tensor:
    with torch.no_grad():
        soft = F.log_softmax(teacher(images) / s.distill_temperature, dim=1)
    kl = F.kl_div(F.log_softmax(logits / s.distill_temperature, dim=1), soft, reduction="batchmean", log_target=True)
    return (1 - s.distill_alpha) * ce + s.distill_alpha * s.distill_temperature**2 * kl


@torch.no_grad()
def evaluate(
    model: nn.Module, split: LoadedSplit, *, batch_size: int = 64, channels_last: bool = True, device: str = "cpu"
) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent on ``split`` (no augmentation), on ``device``;
    under torch.distributed each rank scores every ``world``-th image and the counts are
    summed, so every rank returns the figures of the whole split."""
    model.eval()
    target = distributed.device_for(device)
    home = _device_of(model)
    model.to(device=target, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    world = distributed.world_size()
    shard = (distributed.rank(), world) if world > 1 else None
    correct1 = correct5 = total = 0
    try:
        for images, labels in iterate_batches(split, batch_size, train=False, channels_last=channels_last, shard=shard):
            images, labels = images.to(target, non_blocking=True), labels.to(target, non_blocking=True)
            logits = model(images)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(1).sum())
            total += len(labels)
    finally:
        model.to(home)
    correct1, correct5, total = distributed.all_reduce_sum([correct1, correct5, total])
    return {"top1": 100.0 * correct1 / max(total, 1), "top5": 100.0 * correct5 / max(total, 1)}
