"""What a network costs, and the budget calibration that starves it to ``env`` of it.

A network's parameters (or MACs) are a polynomial in the kept fractions of its
prunable layers (:class:`ResourceModel`); :func:`resource_model` builds it from the
couplings the surgery reads off torch-pruning's graph, and the calibration finds the
survival probabilities whose *expected* resource is ``env`` times the parent's.
Pure maths on plain data: nothing here imports torch-pruning.

Example:
    >>> from squish_plugin.synthesis.resources import LinearForm, ResourceModel, ResourceTerm
    >>> conv = ResourceTerm(9.0, (LinearForm(0, ((0, 64),)), LinearForm(3)))  # 3x3, 3 -> 64 channels
    >>> ResourceModel((conv,))([0.5])
    864.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError

__all__ = [
    "COST_EXPONENT",
    "LinearForm",
    "SelectedPart",
    "ResourceModel",
    "ResourceTerm",
    "active_index",
    "bisect",
    "calibrate_multiplier",
    "channel_form",
    "expected_fractions",
    "kept_floor",
    "resource_model",
    "round_up",
    "starve_layers",
]

COST_EXPONENT = 0.5  # starvation="cost": a_l = (cluster cost / median cluster cost) ** COST_EXPONENT
ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class LinearForm:
    """``constant + sum(coef * f[layer])``: a tensor dimension as a function of the
    kept fractions ``f`` of the prunable layers that feed it (concatenations and
    flattens give several layers or large coefficients)."""

    constant: float = 0.0
    coeffs: tuple[tuple[int, float], ...] = ()

    def __call__(self, fractions: Sequence[float]) -> float:
        return self.constant + sum(coef * fractions[layer] for layer, coef in self.coeffs)

    def renumbered(self, index: Mapping[int, int]) -> LinearForm:
        """The same dimension with only the layers in ``index`` free (renamed to
        ``index[layer]``); every other layer is held at fraction 1 (folded into the constant)."""
        fixed = self.constant + sum(c for layer, c in self.coeffs if layer not in index)
        return LinearForm(fixed, tuple((index[layer], c) for layer, c in self.coeffs if layer in index))


@dataclass(frozen=True)
class ResourceTerm:
    """``scale * prod(form(f) for form in factors)``, e.g. a conv weight's size is
    ``k*k * out * in``."""

    scale: float
    factors: tuple[LinearForm, ...] = ()

    def __call__(self, fractions: Sequence[float]) -> float:
        value = self.scale
        for form in self.factors:
            value *= form(fractions)
        return value


@dataclass(frozen=True)
class ResourceModel:
    """A network's resource (parameters or MACs) as a polynomial in the kept
    fractions of its prunable layers.

    With independent draws in different layers, ``E[out * in] = E[out] * E[in]``,
    so evaluating at the *expected* fractions gives the expected resource exactly,
    except for a dimension coupled to the same layer twice (rare; approximated).
    """

    terms: tuple[ResourceTerm, ...] = field(default_factory=tuple)

    def restrict(self, active: Sequence[int], size: int) -> ResourceModel:
        """The same resource with only the layers ``active`` (indices among ``size``)
        free, renumbered 0..len(active)-1; every other layer is held at fraction 1."""
        index = active_index(active, size)
        return ResourceModel(
            tuple(ResourceTerm(t.scale, tuple(f.renumbered(index) for f in t.factors)) for t in self.terms)
        )

    def __call__(self, fractions: torch.Tensor | Sequence[float]) -> float:
        # plain floats: this runs inside a bisection, tensors would be 10x slower
        values = [float(f) for f in fractions]
        return float(sum(term(values) for term in self.terms))


@dataclass(frozen=True)
class SelectedPart:
    """What the ``layers`` free layers of a (restricted) resource or latency model account
    for: its value less its value with all of them at 0, the rest held as they are. A budget
    of ``env`` times it keeps ``env`` of what a partial selection (NNI's ``op_names``) owns,
    not ``env`` of the whole network cut out of the selection alone."""

    model: Callable[[Sequence[float]], float]
    layers: int
    floor: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "floor", float(self.model([0.0] * self.layers)))

    def __call__(self, fractions: torch.Tensor | Sequence[float]) -> float:
        return self.model(fractions) - self.floor


def active_index(active: Sequence[int], size: int) -> dict[int, int]:
    """``{layer: new index}`` for the free layers of a restricted model; refuses indices outside ``0..size-1``."""
    if any(not 0 <= layer < size for layer in active):
        raise InvalidArgumentError(f"active layer indices must lie in 0..{size - 1}.")
    return {layer: i for i, layer in enumerate(active)}


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``value``."""
    return -(-value // multiple) * multiple


# --------------------------------------------------------------------------- a network's polynomial

Couplings = Mapping[nn.Module, Mapping[int, int]]


def resource_model(
    model: nn.Module,
    out_dims: Couplings,
    in_dims: Couplings,
    output_shapes: Mapping[nn.Module, tuple[int, ...]],
    batch: int,
    resource: str = "params",
) -> ResourceModel:
    """Parameters (or MACs per image) of ``model`` as a polynomial of the kept fractions.

    ``out_dims[module][i]`` / ``in_dims[module][i]`` count the output / input channels
    of ``module`` that prunable layer ``i`` removes with its clusters (the surgery reads
    them off the dependency graph); ``output_shapes`` are the Conv/Linear outputs of one
    forward pass of ``batch`` images (for MACs)."""
    terms: list[ResourceTerm] = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            terms.extend(_terms(module, own, out_dims, in_dims, output_shapes, resource, batch))
    return ResourceModel(tuple(terms))


def channel_form(total: int, coupled: Mapping[int, int]) -> LinearForm:
    """A dimension of ``total`` channels of which layer ``i`` removes ``coupled[i]`` with its clusters."""
    return LinearForm(total - sum(coupled.values()), tuple(sorted(coupled.items())))


def _terms(module, own, out_dims, in_dims, output_shapes, resource, batch) -> list[ResourceTerm]:
    if isinstance(module, ROOT_TYPES) and not getattr(module, "transposed", False):
        if isinstance(module, nn.Linear):
            n_out, n_in, kernel, groups = module.out_features, module.in_features, 1, 1
        else:
            n_out, n_in = module.out_channels, module.in_channels
            kernel, groups = math.prod(module.kernel_size), module.groups
        out_f = channel_form(n_out, out_dims.get(module, {}))
        in_f = channel_form(n_in, in_dims.get(module, {})) if groups == 1 else LinearForm(n_in // groups)
        if resource == "macs":
            shape = output_shapes.get(module, ())
            positions = math.prod(shape) // max(shape[1] if len(shape) > 1 else 1, 1) // batch
            if isinstance(module, nn.Linear) and shape:
                positions = math.prod(shape[:-1]) // batch
            return [ResourceTerm(float(kernel * positions), (out_f, in_f))]
        terms = [ResourceTerm(float(kernel), (out_f, in_f))]
        if module.bias is not None:
            terms.append(ResourceTerm(1.0, (out_f,)))
        return terms
    if resource == "macs":
        return []
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out_f = channel_form(module.num_features, out_dims.get(module, {}))
        return [ResourceTerm(float(len(own)), (out_f,))]
    # anything else keeps its size (an approximation for exotic layers)
    return [ResourceTerm(float(sum(p.numel() for p in own)))]


# --------------------------------------------------------------------------- calibration


def kept_floor(n: int, min_channels: int, max_drop: float | None) -> int:
    """The fewest clusters a layer of ``n`` may keep this generation."""
    floor = min(min_channels, n)
    if max_drop is not None:
        floor = max(floor, n - math.floor(max_drop * n))
    return floor


def expected_fractions(
    probabilities: Sequence[torch.Tensor], min_channels: int = 1, max_drop: float | None = None
) -> torch.Tensor:
    """Expected kept fraction of each layer, floors and cap included (rounding ignored)."""
    out = []
    for p in probabilities:
        n = p.numel()
        out.append(max(float(p.sum()), float(kept_floor(n, min_channels, max_drop))) / n)
    return torch.tensor(out, dtype=torch.float64)


def bisect(fn: Callable[[float], float], target: float, lo: float, hi: float, iterations: int) -> float:
    """The ``x`` in ``[lo, hi]`` with ``fn(x) = target`` for a non-decreasing ``fn`` (bisection)."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if fn(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def calibrate_multiplier(
    encodings: Sequence[torch.Tensor],
    resource: ResourceModel,
    env: float,
    min_channels: int = 1,
    iterations: int = 60,
    max_drop: float | None = None,
) -> float:
    """The multiplier ``m`` for which ``P_synth = min(1, m * P)`` gives an expected
    resource of ``env`` times the parent's (``"budget"`` mode), by bisection.

    Expected resource grows monotonically with ``m``; ``m = 1 / min(P)`` keeps
    everything. If even the floors exceed the budget, the floors win.
    """
    full = resource(torch.ones(len(encodings), dtype=torch.float64))
    target = env * full
    lo, hi = 0.0, 1.0 / max(min(float(p.min()) for p in encodings), 1e-12)

    def expected(m: float) -> float:
        probs = [torch.clamp(m * p, max=1.0) for p in encodings]
        return resource(expected_fractions(probs, min_channels, max_drop))

    if expected(hi) <= target:
        return hi
    return bisect(expected, target, lo, hi, iterations)


def _layer_multiplier(p: torch.Tensor, kept: float, iterations: int = 50) -> float:
    """The ``m`` with ``sum(min(1, m * p)) = kept`` clusters (bisection)."""
    hi = 1.0 / max(float(p.min()), 1e-12)
    if kept >= p.numel():
        return hi
    return bisect(lambda m: float(torch.clamp(m * p, max=1.0).sum()), kept, 0.0, hi, iterations)


def _cost_exponents(resource: ResourceModel, sizes: Sequence[int]) -> list[float]:
    """``a_l`` of ``starvation="cost"``: the resource one cluster of layer ``l`` costs,
    relative to the median layer's, to the power :data:`COST_EXPONENT`."""
    full = resource([1.0] * len(sizes))
    costs = []
    for i, n in enumerate(sizes):
        fractions = [1.0] * len(sizes)
        fractions[i] = (n - 1) / n
        costs.append(max(full - resource(fractions), 1e-12))
    median = float(np.median(costs))
    return [(c / median) ** COST_EXPONENT for c in costs]


def starve_layers(
    encodings: Sequence[torch.Tensor],
    resource: ResourceModel,
    env: float,
    *,
    starvation: str = "layer",
    min_channels: int = 1,
    max_drop: float | None = None,
) -> list[torch.Tensor]:
    """Every layer starved to one common expected kept fraction ``f`` (layer ``l`` keeps
    ``f ** a_l``, ``a_l = 1`` unless ``starvation="cost"``; floors and the ``max_drop``
    cap respected) such that the expected resource is ``env`` times the parent's;
    within a layer, clusters keep the encoding's relative odds."""
    sizes = [p.numel() for p in encodings]
    floors = [kept_floor(n, min_channels, max_drop) / n for n in sizes]
    exponents = _cost_exponents(resource, sizes) if starvation == "cost" else [1.0] * len(sizes)

    def fractions_at(f: float) -> list[float]:
        return [max(f**a, fl) for a, fl in zip(exponents, floors)]

    f = bisect(lambda x: resource(fractions_at(x)), env * resource([1.0] * len(sizes)), 0.0, 1.0, 50)
    out = []
    for p, n, frac in zip(encodings, sizes, fractions_at(f)):
        m = _layer_multiplier(p, frac * n)
        out.append(torch.clamp(m * p, max=1.0))
    return out
