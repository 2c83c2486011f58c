"""The SquishedNets ancestor (SqueezeNet v1.1 with a ``num_classes``-filter conv10),
and the ImageNet class tables.

Example:
    >>> from squish_plugin import squeezenet1_1_ancestor
    >>> squeezenet1_1_ancestor(num_classes=10, weights=None).classifier[1].out_channels
    10
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from .errors import CheckpointError, InvalidArgumentError

__all__ = [
    "IMAGENET10_WNIDS",
    "IMAGENETTE_WNIDS",
    "imagenet_classes",
    "imagenet_index",
    "squeezenet1_1_ancestor",
]

#: The paper's ImageNet-10, as it lists them. n03584254 is "iPod" in ILSVRC-2012;
#: "cellular telephone" is n02992529.
IMAGENET10_WNIDS = (
    "n02783161", "n03584254", "n03085013", "n04548362", "n04557648",
    "n07930864", "n04037443", "n03782006", "n03793489", "n04409515",
)  # fmt: skip
#: fast.ai's Imagenette, in its (sorted) folder order.
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)  # fmt: skip

_PACKAGED_WEIGHTS = "squeezenet1_1_imagenet_tvnorm_fp16.npz"
WEIGHT_CHOICES = "'imagenet' (packaged, offline), 'torchvision' (downloads), None, or a file path"


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1,000 ILSVRC-2012 classes as ``(wnid, name)`` in class-index order."""
    text = resources.files(__package__).joinpath("_data/imagenet1k_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return tuple((wnid, name) for _idx, wnid, name in rows)


def imagenet_index(cls: str | int) -> int:
    """ImageNet-1k class index of a wnid (``"n01440764"``) or an index."""
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        if 0 <= cls < 1000:
            return int(cls)
    elif isinstance(cls, str):
        for index, (wnid, _name) in enumerate(imagenet_classes()):
            if wnid == cls:
                return index
    raise InvalidArgumentError(
        f"{cls!r} is not an ImageNet-1k class: give a wnid such as 'n01440764' or an index 0-999."
    )


def _load_state(weights: str | os.PathLike) -> dict[str, torch.Tensor]:
    if weights == "imagenet":
        ref = resources.files(__package__).joinpath(f"_data/{_PACKAGED_WEIGHTS}")
        with resources.as_file(ref) as path:
            return _read_state_file(path)
    if weights == "torchvision":
        enum = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
        return enum.get_state_dict(progress=False)
    return _read_state_file(Path(weights))


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InvalidArgumentError(f"weights file {str(path)!r} does not exist; use {WEIGHT_CHOICES}.")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(data[k].astype(np.float32)) for k in data.files}
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights file {str(path)!r} ({type(exc).__name__}).") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"weights file {str(path)!r} holds no state dict.")
    return {k: v.float() for k, v in state.items() if isinstance(v, torch.Tensor)}


def squeezenet1_1_ancestor(
    num_classes: int = 10,
    weights: str | os.PathLike | None = "imagenet",
    *,
    head: Sequence[str | int] | None = None,
    seed: int = 0,
) -> nn.Module:
    """SqueezeNet v1.1 with conv10 cut to ``num_classes`` 1x1 filters: the
    SquishedNets ancestor (727,626 parameters for 10 classes).

    Args:
        num_classes: filters of the new conv10.
        weights: ``"imagenet"`` — ImageNet-pretrained features shipped with the
            package (DeepScale's SqueezeNet v1.1, offline); ``"torchvision"`` —
            torchvision's own ``IMAGENET1K_V1`` weights (downloads); ``None`` — random
            init; or a path to a ``.npz`` / state-dict file with torchvision key names.
        head: ``num_classes`` ImageNet classes (wnids or indices) whose pretrained
            conv10 rows start the new head, e.g. :data:`IMAGENETTE_WNIDS`; by default
            a fresh head is drawn (normal, std 0.01, as torchvision does) from ``seed``.
        seed: seed of every random initialisation here.

    Inputs are RGB normalised with torchvision's ImageNet mean and std.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidArgumentError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    if head is not None and len(head) != num_classes:
        raise InvalidArgumentError(f"head must list exactly num_classes={num_classes} classes, got {len(head)}.")
    head_idx = [imagenet_index(c) for c in head] if head is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.squeezenet1_1(weights=None, num_classes=num_classes)
    if weights is not None:
        _load_pretrained(model, _load_state(weights), num_classes, head_idx)
    elif head_idx is not None:
        raise InvalidArgumentError("head needs pretrained weights; weights=None gives a random net.")
    model.squish_arch = {"builder": "squeezenet1_1_ancestor", "kwargs": {"num_classes": num_classes}}
    return model


def _load_pretrained(
    model: nn.Module, state: dict[str, torch.Tensor], num_classes: int, head_idx: list[int] | None
) -> None:
    w, b = state.get("classifier.1.weight"), state.get("classifier.1.bias")
    own = model.state_dict()
    features = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    expected = {k for k in own if not k.startswith("classifier.")}
    if set(features) != expected:
        raise CheckpointError("the weights do not match SqueezeNet v1.1's layers (torchvision key names).")
    bad = [k for k in features if features[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"weights for {bad[0]} have the wrong shape for SqueezeNet v1.1.")
    if w is not None and w.shape[0] == num_classes and head_idx is None:
        features.update({"classifier.1.weight": w, "classifier.1.bias": b})
    elif head_idx is not None:
        if w is None or w.shape[0] != 1000:
            raise CheckpointError("head needs the 1000-way ImageNet classifier in the weights.")
        features.update({"classifier.1.weight": w[head_idx], "classifier.1.bias": b[head_idx]})
    else:
        features.update({k: v for k, v in own.items() if k.startswith("classifier.")})
    model.load_state_dict(features, strict=True)
