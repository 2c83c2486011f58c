"""The genetics core: genetic encoding, environmental factor, stochastic synthesis.

Pure tensor maths on per-layer cluster strengths. Nothing here knows about
torch-pruning, NNI, files or training, so every function is testable in
milliseconds; what a network costs and the budget calibration live in
:mod:`squish_plugin.synthesis.resources`.

Terms (SquishedNets, Shafiee et al. 2017, and synaptic cluster-driven synthesis,
Shafiee & Wong 2016):

* a *cluster* is one output channel of a prunable layer, with everything coupled
  to it; its *strength* ``s_c`` is the norm of its weights;
* the *genetic encoding* of the parent is ``P(c | W) = exp((s_c / z_l - 1) / T)``
  with ``z_l`` the strongest cluster of layer ``l`` (the paper uses ``T = 1``);
* the *environmental factor* ``F(E) = env`` starves the offspring:
  ``P_synth(c) = F(E) * P(c | W)`` and each cluster survives an independent
  Bernoulli draw (random mutation).

Example:
    >>> import torch
    >>> from squish_plugin.synthesis.genetics import SynthesisConfig, synthesize
    >>> strengths = [torch.tensor([1.0, 0.5, 0.25]), torch.tensor([2.0, 2.0])]
    >>> keep = synthesize(strengths, SynthesisConfig(env=0.9, mode="paper"), seed=0)
    >>> [k.dtype for k in keep]
    [torch.bool, torch.bool]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidArgumentError
from .resources import ResourceModel, calibrate_multiplier, kept_floor, round_up, starve_layers

__all__ = [
    "MODES",
    "RESOURCES",
    "STARVATION",
    "SynthesisConfig",
    "cluster_strength",
    "derive_seed",
    "draw",
    "enforce_floor_and_rounding",
    "synaptic_probability",
    "synthesis_probabilities",
    "synthesize",
]

MODES = ("paper", "budget")
RESOURCES = ("params", "macs", "latency")
STARVATION = ("global", "layer", "cost")


@dataclass(frozen=True)
class SynthesisConfig:
    """How an offspring is synthesised from its parent.

    Args:
        env: environmental factor ``F(E)`` in (0, 1].
        mode: ``"paper"`` keeps each cluster with probability ``env * P(c|W)``,
            literally as in the paper (with env=0.9 an offspring keeps roughly half of
            its parent's parameters); ``"budget"`` keeps the same relative
            probabilities but scales them so that the offspring's *expected*
            resource is ``env`` times the parent's (with env=0.9, ~90% of the
            parameters per generation: the trajectory of the paper's sizes).
        resource: what ``"budget"`` mode budgets: ``"params"``, ``"macs"`` or ``"latency"``
            (measured time on a target, from a per-layer latency table handed to the
            pruner: :mod:`squish_plugin.synthesis.latency`).
        min_channels: every prunable layer keeps at least this many clusters (>= 1).
        round_to: if set, kept counts are rounded *up* to a multiple of it
            (capped at the layer's width), e.g. 8 for TensorRT-friendly widths. Note:
            torch-pruning's ``round_to`` of the same name rounds kept channels *down*; a
            latency table's ``round_to`` is the multiple measured fastest on its target.
            With ``size_tolerance`` the repaired draw meets the budget with the rounding.
        temperature: ``T`` of the encoding ``exp((s/z - 1) / T)``; the paper's is 1.
            Lower values make strong clusters rarely die.
        max_drop: if set, the largest fraction of a layer's clusters one generation
            may remove (protects bottlenecks such as conv1 and the squeezes); ``None``,
            the paper's, sets no cap.
        starvation: how ``"budget"`` mode spreads the starvation: ``"global"`` (the
            paper's one multiplier for every cluster: layers whose clusters are weak
            relative to their strongest lose most), ``"layer"`` (the default, chosen
            by measurement on Imagenette: every layer is starved to the same expected
            kept fraction, the one that meets the budget; the encoding then decides
            *which* clusters of a layer survive)
            or ``"cost"`` (layer ``l`` keeps ``f ** a_l`` with ``a_l`` the square root of
            its cluster's cost in the budgeted resource relative to the median
            cluster's: clusters that cost more are starved harder; under a parameter
            budget that spares conv1 and starves the squeezes, whose clusters feed
            3x3 expands).
        size_tolerance: if set (``"budget"`` mode), every offspring is repaired to the
            budget: its draw is re-thresholded (the same random numbers, one cut on
            ``u / P_synth`` across all layers) until its resource lies within this
            fraction of ``env`` times the parent's, so that offspring compared with one
            another differ in structure, not in size. ``None``, the paper's, keeps the
            draw as it falls (its resource is ``env`` only in expectation).
    """

    env: float = 0.9
    mode: str = "budget"
    resource: str = "params"
    min_channels: int = 1
    round_to: int | None = None
    temperature: float = 1.0
    max_drop: float | None = None
    starvation: str = "layer"
    size_tolerance: float | None = None

    def __post_init__(self) -> None:
        env = self.env
        if isinstance(env, bool) or not isinstance(env, (int, float)) or not (0.0 < env <= 1.0):
            raise InvalidArgumentError(f"env must be a number in (0, 1], got {env!r}.")
        if self.mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.resource not in RESOURCES:
            raise InvalidArgumentError(f"resource must be one of {RESOURCES}, got {self.resource!r}.")
        if not _is_int(self.min_channels) or self.min_channels < 1:
            raise InvalidArgumentError(f"min_channels must be an integer >= 1, got {self.min_channels!r}.")
        if self.round_to is not None and (not _is_int(self.round_to) or self.round_to < 1):
            raise InvalidArgumentError(f"round_to must be None or an integer >= 1, got {self.round_to!r}.")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0 and math.isfinite(t)):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {t!r}.")
        if self.starvation not in STARVATION:
            raise InvalidArgumentError(f"starvation must be one of {STARVATION}, got {self.starvation!r}.")
        m = self.max_drop
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1):
            raise InvalidArgumentError(f"max_drop must be None or a number in (0, 1], got {m!r}.")
        tol = self.size_tolerance
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1):
            raise InvalidArgumentError(f"size_tolerance must be None or a number in (0, 1), got {tol!r}.")
        if tol is not None and self.mode != "budget":
            raise InvalidArgumentError('size_tolerance repairs offspring to a budget: it needs mode="budget".')


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- encoding


def cluster_strength(weight: torch.Tensor, norm: str | Callable[[torch.Tensor], torch.Tensor] = "l1") -> torch.Tensor:
    """Strength of each cluster from its filter weights, shape ``[clusters, ...]``.

    ``norm`` is ``"l1"`` (the default, the paper's synaptic strength), ``"l2"``, or a
    callable mapping the weight tensor to one non-negative score per cluster.
    """
    flat = weight.detach().float().flatten(1)
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l2":
        return flat.pow(2).sum(1).sqrt()
    if callable(norm):
        scores = torch.as_tensor(norm(weight.detach())).float().flatten()
        if scores.numel() != weight.shape[0]:
            raise InvalidArgumentError(f"strength callable must return {weight.shape[0]} scores, got {scores.numel()}.")
        return scores
    raise InvalidArgumentError(f"norm must be 'l1', 'l2' or a callable, got {norm!r}.")


def synaptic_probability(strengths: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The genetic encoding ``P(c|W) = exp((s_c / z_l - 1) / T)`` of one layer.

    The strongest cluster gets probability 1. A layer whose strengths are all zero
    (a dead layer) gets probability 1 everywhere: no information, no preference.
    """
    s = strengths.detach().double().clamp_min(0.0)
    if not torch.isfinite(s).all():
        raise InvalidArgumentError("cluster strengths must be finite (the weights hold NaN or inf).")
    z = s.max()
    if z <= 0:
        return torch.ones_like(s)
    return torch.exp((s / z - 1.0) / temperature)


# --------------------------------------------------------------------------- synthesis


def synthesis_probabilities(
    strengths: Sequence[torch.Tensor],
    config: SynthesisConfig,
    resource: ResourceModel | None = None,
) -> list[torch.Tensor]:
    """``P_synth(c)`` for every cluster of every layer, per ``config.mode``."""
    encodings = [synaptic_probability(s, config.temperature) for s in strengths]
    if config.mode == "paper":
        multiplier = config.env
    else:
        if resource is None:
            raise InvalidArgumentError('mode="budget" needs a resource model of the network.')
        if config.starvation != "global":
            return starve_layers(
                encodings,
                resource,
                config.env,
                starvation=config.starvation,
                min_channels=config.min_channels,
                max_drop=config.max_drop,
            )
        multiplier = calibrate_multiplier(
            encodings, resource, config.env, config.min_channels, max_drop=config.max_drop
        )
    return [torch.clamp(multiplier * p, max=1.0) for p in encodings]


#: The seed streams, one room for all of them. ``derive_seed(seed, g, k)`` draws offspring
#: ``k`` of generation ``g`` (the pruner's ``step()`` draws generation ``g`` as ``k = 0``); the
#: streams below extend that key, or stand alone behind a tag no generation reaches (>= 10,000).
TRAIN_STREAM = 1  #: derive_seed(seed, g, k, TRAIN_STREAM): its data order (the ancestor's: g = k = 0)
REINIT_STREAM = 2  #: derive_seed(seed, g, k, REINIT_STREAM): its fresh weights (``reinitialize``)
SCREEN_STREAM = 3  #: derive_seed(training seed, SCREEN_STREAM): selection's short fine-tune
SCREEN_RNG_STREAM = 4  #: derive_seed(training seed, SCREEN_RNG_STREAM): the global RNG while screening
FINISH_STREAM = 10_001  #: derive_seed(run seed, FINISH_STREAM, g): the finishing of generation g's network
EPOCH_STREAM = 10_002  #: derive_seed(finishing seed, EPOCH_STREAM, e[, 1]): epoch e's batch order (its dropout)
SCRATCH_STREAM = 10_003  #: derive_seed(run seed, SCRATCH_STREAM, g): a scratch control's first weights
CALIBRATION_STREAM = 10_004  #: derive_seed(seed, CALIBRATION_STREAM, j): latency calibration lineage j


def derive_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed for ``(seed, *stream)`` that is the same in every process (the
    streams are named above)."""
    if not _is_int(seed) or seed < 0:
        raise InvalidArgumentError(f"seed must be an integer >= 0, got {seed!r}.")
    state = np.random.SeedSequence([int(seed), *map(int, stream)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def enforce_floor_and_rounding(
    keep: torch.Tensor,
    priority: torch.Tensor,
    min_channels: int,
    round_to: int | None,
    max_drop: float | None = None,
) -> torch.Tensor:
    """Revive the highest-``priority`` dropped clusters until the layer holds at
    least ``min_channels`` (and loses at most ``max_drop`` of its clusters) and, with
    ``round_to``, a multiple of it (capped at the layer's width). Never removes a
    survivor."""
    n = keep.numel()
    target = max(int(keep.sum()), kept_floor(n, min_channels, max_drop))
    if round_to:
        target = min(n, round_up(target, round_to))
    missing = target - int(keep.sum())
    if missing <= 0:
        return keep
    keep = keep.clone()
    dropped = (~keep).nonzero().flatten()
    # stable sort so ties resolve by index, identically everywhere
    order = torch.sort(priority[dropped], descending=True, stable=True).indices
    keep[dropped[order[:missing]]] = True
    return keep


def draw(
    probabilities: Sequence[torch.Tensor],
    seed: int,
    min_channels: int = 1,
    round_to: int | None = None,
    max_drop: float | None = None,
    budget: tuple[ResourceModel, float, float] | None = None,
) -> list[torch.Tensor]:
    """Random mutation: keep each cluster with its probability, one boolean mask per
    layer, then apply the floor and rounding. Layer ``i`` draws from its own
    generator seeded by ``(seed, i)``, so the draw is the same in every process.

    With ``budget=(resource, target, tolerance)`` a draw whose ``resource`` misses
    ``target`` by more than ``tolerance`` (a fraction) is repaired: the clusters are
    ordered by ``u / p`` (their uniform draw over their probability; the draw itself
    keeps those below 1) and the cut on that order is moved until the resource is as
    close to ``target`` as one cluster allows (:func:`repair_to_budget`)."""
    masks, ratios = [], []
    for index, p in enumerate(probabilities):
        gen = torch.Generator().manual_seed(derive_seed(seed, index))
        u = torch.rand(p.numel(), generator=gen, dtype=torch.float64)
        masks.append(enforce_floor_and_rounding(u < p, p, min_channels, round_to, max_drop))
        ratios.append(torch.where(p > 0, u / p.clamp_min(1e-300), torch.full_like(u, math.inf)))
    if budget is not None:
        resource, target, tolerance = budget
        if abs(resource(_fractions(masks)) - target) > tolerance * target:
            masks = repair_to_budget(ratios, resource, target, min_channels, round_to, max_drop)
    return masks


def _fractions(masks: Sequence[torch.Tensor]) -> list[float]:
    return [float(m.sum()) / m.numel() for m in masks]


def repair_to_budget(
    ratios: Sequence[torch.Tensor],
    resource: ResourceModel,
    target: float,
    min_channels: int = 1,
    round_to: int | None = None,
    max_drop: float | None = None,
) -> list[torch.Tensor]:
    """Keep the ``k`` clusters of lowest ``ratio`` (across all layers, ties by layer and
    index), floors and rounding applied, with ``k`` the one whose resource is closest to
    ``target`` (the resource grows with ``k``: a bisection finds it)."""
    flat = torch.cat([r.double() for r in ratios])
    order = torch.sort(flat, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    bounds = np.cumsum([0] + [r.numel() for r in ratios])
    ranks = [rank[bounds[i] : bounds[i + 1]] for i in range(len(ratios))]

    def masks_at(k: int) -> list[torch.Tensor]:
        return [
            enforce_floor_and_rounding(r < k, -ratio, min_channels, round_to, max_drop)
            for r, ratio in zip(ranks, ratios)
        ]

    lo, hi = 0, int(order.numel())  # resource(lo) <= target <= resource(hi), when reachable
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if resource(_fractions(masks_at(mid))) <= target:
            lo = mid
        else:
            hi = mid
    # one cluster at a time the cut is within a cluster of the target; rounded, it jumps
    below = _top_up(masks_at(lo), ratios, resource, target, round_to) if round_to else masks_at(lo)
    candidates = [below, masks_at(hi)]
    return min(candidates, key=lambda m: abs(resource(_fractions(m)) - target))


def _top_up(
    masks: list[torch.Tensor],
    ratios: Sequence[torch.Tensor],
    resource: ResourceModel,
    target: float,
    round_to: int | None,
) -> list[torch.Tensor]:
    """From a draw under ``target``, add one step at a time (the next ``round_to`` clusters
    of lowest ratio in one layer; one cluster without rounding) while the resource stays
    <= ``target``, always the step whose first cluster has the lowest ratio: with rounding
    the single cut of :func:`repair_to_budget` moves in coarse jumps, this fills the gap."""
    masks = [m.clone() for m in masks]
    while True:
        best = None
        for i, (mask, ratio) in enumerate(zip(masks, ratios)):
            dropped = (~mask).nonzero().flatten()
            if dropped.numel() == 0:
                continue
            order = dropped[torch.sort(ratio[dropped], stable=True).indices]
            kept = int(mask.sum())
            step = (round_up(kept + 1, round_to) - kept) if round_to else 1
            grown = mask.clone()
            grown[order[:step]] = True
            trial = masks[:i] + [grown] + masks[i + 1 :]
            if resource(_fractions(trial)) <= target and (best is None or ratio[order[0]] < best[0]):
                best = (float(ratio[order[0]]), i, grown)
        if best is None:
            return masks
        masks[best[1]] = best[2]


def synthesize(
    strengths: Sequence[torch.Tensor],
    config: SynthesisConfig,
    seed: int,
    resource: ResourceModel | None = None,
) -> list[torch.Tensor]:
    """Draw one offspring from cluster strengths: a boolean keep-mask per layer."""
    probabilities = synthesis_probabilities(strengths, config, resource)
    return draw(probabilities, seed, config.min_channels, config.round_to, config.max_drop, budget_of(config, resource))


def budget_of(config: SynthesisConfig, resource: ResourceModel | None) -> tuple[ResourceModel, float, float] | None:
    """``draw``'s ``budget`` for ``config``: ``(resource, env * the parent's, size_tolerance)``
    when offspring are repaired to the budget, else ``None``."""
    if config.size_tolerance is None or resource is None:
        return None
    whole = resource([1.0] * _layers(resource))
    return resource, config.env * whole, config.size_tolerance


def _layers(resource: ResourceModel) -> int:
    if hasattr(resource, "layers"):  # a LatencyModel knows its prunable layers
        return int(resource.layers)
    return 1 + max((layer for t in resource.terms for f in t.factors for layer, _ in f.coeffs), default=-1)
