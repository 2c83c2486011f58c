"""A layer's geometry -- what its time depends on besides its widths -- and every
Conv2d/Linear's geometry in a network, from one forward pass (or from a trace that ran one).

Example:
    >>> import torch
    >>> from squish_plugin.synthesis.geometry import LayerGeometry, layer_geometry
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    >>> geo = layer_geometry(net, torch.zeros(1, 3, 16, 16))["0"]
    >>> LayerGeometry.of(geo).in_hw, geo["cout"]
    ((16, 16), 8)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .resources import ROOT_TYPES

__all__ = ["LayerGeometry", "geometry_of", "layer_geometry"]


@dataclass(frozen=True)
class LayerGeometry:
    """What a layer's time depends on besides its widths: the one geometry type of tables,
    timers and the TX1 kit (hashable: it keys the timings a table shares between layers)."""

    op: str  # "conv" or "linear"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_hw: tuple[int, int]

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> LayerGeometry:
        """From :func:`layer_geometry`'s (or a table file's) per-layer mapping."""
        pairs = {k: tuple(int(v) for v in data[k]) for k in ("kernel", "stride", "padding", "in_hw")}
        return cls(str(data["op"]), **pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, **{k: list(getattr(self, k)) for k in ("kernel", "stride", "padding", "in_hw")}}


def layer_geometry(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, dict[str, Any]]:
    """``{name: geometry}`` of every Conv2d/Linear that runs on ``example_inputs``: op,
    kernel, stride, padding, input height/width, input and output channels (one forward
    pass with hooks, model order). A :class:`~squish_plugin.synthesis.surgery.Surgeon` has
    the same from its trace (``Surgeon.geometry()``), without another pass."""
    names = {m: n for n, m in model.named_modules()}
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def hook(module: nn.Module, inputs: tuple, _out: object) -> None:
        shapes[module] = tuple(inputs[0].shape)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ROOT_TYPES)]
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return geometry_of(shapes, names)


def geometry_of(
    in_shapes: Mapping[nn.Module, tuple[int, ...]], names: Mapping[nn.Module, str]
) -> dict[str, dict[str, Any]]:
    """``{name: geometry}`` of the Conv/Linear layers in ``in_shapes`` (each layer's input
    shape as it ran, in the order they ran)."""
    found: dict[str, dict[str, Any]] = {}
    for module, shape in in_shapes.items():
        if isinstance(module, nn.Linear):
            geo = {"op": "linear", "kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "in_hw": (1, 1)}
            found[names[module]] = {**geo, "cin": module.in_features, "cout": module.out_features}
            continue
        if module.groups != 1 or len(module.kernel_size) != 2 or isinstance(module.padding, str):
            raise InvalidArgumentError(
                f"layer '{names[module]}': the latency table covers ungrouped 2-D convolutions with numeric padding."
            )
        found[names[module]] = {
            "op": "conv",
            "kernel": tuple(module.kernel_size),
            "stride": tuple(module.stride),
            "padding": tuple(module.padding),
            "in_hw": tuple(shape[-2:]),
            "cin": module.in_channels,
            "cout": module.out_channels,
        }
    return found
