"""Ancestors from model zoos: ``torchvision:<name>`` (any torchvision classifier) and
``timm:<name>`` (with the ``[timm]`` extra), built for ``num_classes`` outputs.

Weights: ``None`` / ``"none"`` draws random ones (seeded); ``"imagenet"`` takes the zoo's
default ImageNet weights and ``"<ENUM>"`` a torchvision weights enum member (e.g.
``IMAGENET1K_V1``); both download, then the 1000-way classifier is replaced by a fresh
``num_classes`` one. Offline, start from a checkpoint instead (a recipe's ``model.init``).

Example:
    >>> from squish_plugin.zoo import zoo_model
    >>> zoo_model("torchvision:resnet18", 10, None).fc.out_features
    10
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .errors import InvalidArgumentError, MissingExtraError

__all__ = ["check_arch", "zoo_model"]

ZOOS = ("torchvision", "timm")


def check_arch(arch: str) -> str:
    """``arch`` if this installation can build it, else one sentence saying what is allowed."""
    if arch == "squeezenet1_1_ancestor":
        return arch
    zoo, _, name = arch.partition(":")
    if zoo not in ZOOS or not name:
        raise InvalidArgumentError(
            f"model.arch must be 'squeezenet1_1_ancestor', 'torchvision:<name>' or 'timm:<name>', got {arch!r}."
        )
    if zoo == "torchvision" and name not in torchvision.models.list_models(module=torchvision.models):
        raise InvalidArgumentError(
            f"torchvision has no classifier {name!r} (torchvision.models.list_models(module=torchvision.models) "
            "lists them, e.g. resnet18, mobilenet_v3_small)."
        )
    if zoo == "timm" and name not in _timm().list_models():
        raise InvalidArgumentError(f"timm has no model {name!r} (timm.list_models() lists them).")
    return arch


def _timm():
    try:
        import timm
    except ImportError:
        raise MissingExtraError("timm: architectures need timm: pip install 'squish-plugin[timm]'.") from None
    return timm


def zoo_model(arch: str, num_classes: int, weights: str | None, *, seed: int = 0) -> nn.Module:
    """``arch`` (``torchvision:<name>`` or ``timm:<name>``) with ``num_classes`` outputs;
    random weights drawn from ``seed``; it carries what :func:`~squish_plugin.load_pruned` needs."""
    zoo, _, name = check_arch(arch).partition(":")
    pretrained = weights not in (None, "none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if zoo == "timm":
            model = _timm().create_model(name, pretrained=pretrained, num_classes=num_classes)
        elif not pretrained:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        else:
            model = torchvision.models.get_model(name, weights=_enum(name, weights))
            _replace_head(model, num_classes)
    model.squish_arch = {"builder": arch, "kwargs": {"num_classes": num_classes}}
    return model


def _enum(name: str, weights: str) -> object:
    members = torchvision.models.get_model_weights(name)
    if weights == "imagenet":
        return members.DEFAULT
    if weights not in members.__members__:
        raise InvalidArgumentError(
            f"model.weights {weights!r} is not one of torchvision's for {name}: "
            f"{', '.join(['none', 'imagenet', *members.__members__])}."
        )
    return members[weights]


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """The last 1000-way Linear (or 1x1 Conv) becomes a fresh ``num_classes`` one."""
    heads = [
        (name, m)
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) and m.out_features == 1000)
        or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)
    ]
    if not heads:
        raise InvalidArgumentError("the pretrained model has no 1000-way classifier layer to replace.")
    name, old = heads[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(
            old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
        )
    setattr(parent, attr, new)
