"""The finishing stage: a long fine-tune of a pruned network with distillation from its
unpruned ancestor, resumable epoch by epoch.

Pruning studies that keep their accuracy end this way (EagleEye fine-tunes 120 epochs;
NNI's MobileNetV2 study distils 180 epochs from the unpruned parent). The generations of a
study train about one epoch each; :func:`finish` gives the networks a user ships the rest.

Example (a user who pruned with the pruner alone):
    >>> import copy
    >>> from squish_plugin import EvolutionarySynthesisPruner, squeezenet1_1_ancestor
    >>> from squish_plugin.study.data import load_split
    >>> from squish_plugin.study.finishing import FinishSettings, finish
    >>> ancestor = squeezenet1_1_ancestor(num_classes=10, weights=None)
    >>> child = EvolutionarySynthesisPruner(copy.deepcopy(ancestor), env=0.8, seed=0).step()
    >>> split = load_split("examples/data/imagenette-mini", "train", 64)
    >>> history = finish(child, split, teacher=ancestor, settings=FinishSettings(epochs=1, batch_size=64), seed=0)
    >>> [round(h["epoch"]) for h in history]
    [1]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InvalidArgumentError
from ..persistence import atomic_save
from ..synthesis.genetics import EPOCH_STREAM, derive_seed
from . import distributed
from .data import LoadedSplit
from .training import TrainSettings, _optimizer, _Placement, steps_per_epoch

__all__ = ["FINISH_STATE_FORMAT", "FinishSettings", "finish"]

FINISH_STATE_FORMAT = "squish-plugin/finish-state-v1"
Score = Callable[[nn.Module], dict[str, float]]
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class FinishSettings:
    """How a finished network trains: ``epochs`` passes over the training images on one
    warm-up + cosine schedule, the last ``full_size_epochs`` of them on whole images
    instead of ``crop`` windows, the loss ``(1 - alpha) * CE + alpha * T^2 * KL`` to the
    teacher's softened outputs (plain cross-entropy without a teacher).

    Example:
        >>> FinishSettings(epochs=10, lr=0.01).train_settings(full_size=False).lr
        0.01
    """

    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    warmup_steps: int = 20
    grad_clip: float | None = 5.0
    crop: int | None = None
    full_size_epochs: int = 0
    alpha: float = 0.7
    temperature: float = 4.0
    channels_last: bool = True
    device: str = "cpu"
    deterministic: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise InvalidArgumentError(f"finishing epochs must be an integer >= 0, got {self.epochs!r}.")
        if not 0 <= self.full_size_epochs <= self.epochs:
            raise InvalidArgumentError(
                f"full_size_epochs must lie in 0..epochs ({self.epochs}), got {self.full_size_epochs!r}."
            )
        if not 0 <= self.alpha <= 1:
            raise InvalidArgumentError(f"the distillation alpha must lie in [0, 1], got {self.alpha!r}.")

    def train_settings(self, *, full_size: bool) -> TrainSettings:
        """The :class:`TrainSettings` of one epoch (whole images when ``full_size``)."""
        return TrainSettings(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            warmup_steps=self.warmup_steps,
            grad_clip=self.grad_clip,
            channels_last=self.channels_last,
            crop=None if full_size else self.crop,
            distill_alpha=self.alpha,
            distill_temperature=self.temperature,
            device=self.device,
            deterministic=self.deterministic,
            precision=self.precision,
        )

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed finishing must share with the one that wrote its state (precision only
        where it is not fp32, so states written before it existed still resume)."""
        return {k: v for k, v in asdict(self).items() if k != "device" and (k, v) != ("precision", "fp32")}


def _read_state(path: Path, model: nn.Module, settings: FinishSettings, seed: int) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"'{path}' is not a readable finishing state ({type(exc).__name__}).") from None
    if not isinstance(state, dict) or state.get("format") != FINISH_STATE_FORMAT:
        raise CheckpointError(f"'{path}' is not a finishing state ({FINISH_STATE_FORMAT}).")
    if state["settings"] != settings.fingerprint() or state["seed"] != seed:
        raise CheckpointError(
            f"'{path}' was written by a finishing with other settings or seed; "
            "finish with the same settings, or delete the file to start again."
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise CheckpointError(f"'{path}' holds another network's weights than the one being finished.") from None
    return state


def finish(
    model: nn.Module,
    split: LoadedSplit,
    *,
    teacher: nn.Module | None,
    settings: FinishSettings = FinishSettings(),  # noqa: B008 (frozen, never mutated)
    seed: int = 0,
    state_path: str | Path | None = None,
    score: Score | None = None,
    on_epoch: EpochCallback | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune ``model`` in place for ``settings.epochs`` on ``split`` (a
    :class:`~squish_plugin.study.data.LoadedSplit`), distilling from ``teacher`` (the
    unpruned ancestor; None: plain cross-entropy); return one record per epoch
    (``epoch``, ``loss``, ``seconds``, ``full_size`` and what ``score(model)`` returns,
    e.g. held-out top-1 — never score on the data you report).

    The schedule is one warm-up + cosine over all epochs; epoch ``e`` draws its batch
    order from ``derive_seed(seed, EPOCH_STREAM, e)`` and its dropout from
    ``derive_seed(seed, EPOCH_STREAM, e, 1)`` alone. With ``state_path`` the
    weights, the optimiser's state and the history are written there (atomically) after
    every epoch, and a call with the same settings and seed continues from the last
    complete epoch and ends with the same weights as one that was never interrupted.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(split, LoadedSplit):
        raise InvalidArgumentError(f"split must be a LoadedSplit from load_split(), got {type(split).__name__}.")
    path = Path(state_path) if state_path is not None else None
    state = _read_state(path, model, settings, seed) if path is not None else None
    history: list[dict[str, Any]] = list(state["history"]) if state else []
    first = len(history)
    per_epoch = steps_per_epoch(split, settings.train_settings(full_size=False))
    total = per_epoch * settings.epochs
    if first >= settings.epochs:
        return history
    device = distributed.device_for(settings.device)
    with _Placement(model, teacher, device, settings.train_settings(full_size=False)) as placed:
        opt = _optimizer(model, settings.train_settings(full_size=False))
        if state:
            opt.load_state_dict(state["optimizer"])
        for epoch in range(first, settings.epochs):
            full = epoch >= settings.epochs - settings.full_size_epochs
            started = time.perf_counter()
            gen = torch.Generator().manual_seed(derive_seed(seed, EPOCH_STREAM, epoch))
            span = range(epoch * per_epoch, (epoch + 1) * per_epoch)
            with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: seeded per epoch
                torch.manual_seed(derive_seed(seed, EPOCH_STREAM, epoch, 1))
                out = placed.steps(opt, split, settings.train_settings(full_size=full), gen, span, total, on_step)
            record = {"epoch": epoch + 1, "loss": out["loss"], "full_size": full}
            record["seconds"] = round(time.perf_counter() - started, 3)
            if score is not None:
                record.update(score(model))
                model.train()
            history.append(record)
            if path is not None and distributed.is_main():
                _write_state(path, model, opt, settings, seed, history)
            if on_epoch:
                on_epoch(record)
    return history


def _write_state(path: Path, model: nn.Module, opt, settings: FinishSettings, seed: int, history: list) -> None:
    atomic_save(
        {
            "format": FINISH_STATE_FORMAT,
            "settings": settings.fingerprint(),
            "seed": seed,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "history": history,
        },
        path,
    )
