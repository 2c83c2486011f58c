"""The NNI face: evolutionary synthesis as an NNI 3 pruner, and a physical
``apply_masks`` for any NNI masks (NNI's ``ModelSpeedup`` tracer fails on current torch).

Needs the ``nni`` extra: ``pip install 'squish-plugin[nni]'``.

Example:
    >>> import torchvision
    >>> from squish_plugin.nni import EvolutionarySynthesisPruner, apply_masks
    >>> model = torchvision.models.squeezenet1_1(num_classes=10)
    >>> config_list = [{"op_types": ["Conv2d"], "exclude_op_names": ["classifier.1"]}]
    >>> pruner = EvolutionarySynthesisPruner(model, config_list, env=0.9)
    >>> _, masks = pruner.compress()
    >>> pruner.unwrap_model()                # NNI's wrappers off before the surgery
    >>> small = apply_masks(model, masks)   # channels physically removed
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..errors import InvalidArgumentError, MissingExtraError
from .genetics import SynthesisConfig, budget_of, cluster_strength, derive_seed, draw, synthesis_probabilities
from .latency import LatencyTable
from .resources import ROOT_TYPES, SelectedPart
from .surgery import EvalMode, PrunableLayer, Surgeon, _restore, clone_model

try:
    from nni.compression.base.compressor import Pruner as _NNIPruner
except ImportError:  # pragma: no cover - exercised where nni is absent
    raise MissingExtraError(
        "squish_plugin.nni needs NNI 3: install it with pip install 'squish-plugin[nni]'."
    ) from None

__all__ = ["EvolutionarySynthesisPruner", "apply_masks", "masks_to_plan"]

Masks = dict[str, dict[str, torch.Tensor]]


#: the keys by which NNI 3 (and NNI 2, which NNI 3 still reads) set a fraction to remove
RATIO_KEYS = ("sparse_ratio", "sparsity", "sparsity_per_layer", "total_sparsity")
GRANULARITIES = (None, "default", "out_channel")


def _one(config_list: list[dict], keys: tuple[str, ...], what: str) -> Any:
    """The one value the entries give for ``keys`` (None when none does); different values
    are refused, since one generation has one setting."""
    values = sorted({c[k] for c in config_list for k in keys if k in c and not c.get("exclude")}, key=str)
    if len(values) > 1:
        raise InvalidArgumentError(
            f"config_list asks for different {what} ({', '.join(map(str, values))}); evolutionary synthesis "
            "draws one generation with one setting: give one value (or env=...)."
        )
    return values[0] if values else None


def synthesis_settings(config_list: list[dict], config: SynthesisConfig, env: float | None) -> SynthesisConfig:
    """The synthesis an NNI ``config_list`` asks for: ``env = 1 - sparse_ratio`` (or NNI 2's
    ``sparsity``) when ``env`` is not given, ``max_sparse_ratio`` as ``max_drop``, a
    ``global_group_id`` (or NNI 2's ``total_sparsity``) as one global multiplier; what the
    synthesis cannot honour (``sparse_threshold``, another granularity) is refused."""
    if not isinstance(config_list, list) or not all(isinstance(c, dict) for c in config_list):
        raise InvalidArgumentError("config_list must be a list of dicts (NNI's config_list format).")
    for i, c in enumerate(config_list):
        if "sparse_threshold" in c:
            raise InvalidArgumentError(
                f"config_list[{i}] sets sparse_threshold; evolutionary synthesis removes a fraction of each "
                "generation (env), not the weights under a threshold: give sparse_ratio or env instead."
            )
        if c.get("granularity") not in GRANULARITIES:
            raise InvalidArgumentError(
                f"config_list[{i}] asks for granularity {c['granularity']!r}; evolutionary synthesis removes whole "
                "output channels: use 'out_channel' (or 'default')."
            )
    ratio = _one(config_list, RATIO_KEYS, "sparse ratios")
    if env is None and ratio is not None:
        if not 0 <= ratio < 1:
            raise InvalidArgumentError(f"sparse_ratio must lie in [0, 1), got {ratio!r}.")
        env = 1.0 - ratio
    if env is not None:
        config = replace(config, env=env)
    max_drop = _one(config_list, ("max_sparse_ratio", "max_sparsity_per_layer"), "max_sparse_ratio values")
    if max_drop is not None:
        config = replace(config, max_drop=max_drop)
    if _one(config_list, ("global_group_id",), "global_group_id values") is not None or any(
        "total_sparsity" in c for c in config_list
    ):
        config = replace(config, starvation="global")  # one multiplier over the group: NNI's global pruning
    return config


def _with_ratio(config_list: list[dict], env: float) -> list[dict]:
    """NNI activates only targets with a sparsity setting; an entry without one (and not an
    NNI 2 ``exclude``) gets ``1 - env``, which our draw, not NNI, acts on."""
    ratio = round(1.0 - env, 6)
    return [
        c if c.get("exclude") or any(k in c for k in RATIO_KEYS) else {**c, "sparse_ratio": ratio} for c in config_list
    ]


def _check_importance(importance: object) -> str | Callable[[torch.Tensor], torch.Tensor]:
    """The NNI face scores clusters from their weights (NNI's collected data)."""
    if importance in ("l1", "l2"):
        return importance
    if callable(importance) and not isinstance(importance, tp.importance.Importance):
        return importance
    raise InvalidArgumentError(
        "the NNI face scores clusters from their weights: importance must be 'l1', 'l2' or a callable on a "
        "weight tensor; torch-pruning Importances (which score groups) work with "
        f"squish_plugin.EvolutionarySynthesisPruner; got {importance!r}."
    )


class EvolutionarySynthesisPruner(_NNIPruner):
    """SquishedNets' evolutionary synthesis behind NNI's three-stage template:
    collect weights -> synaptic probabilities ``P_synth`` -> stochastic draw -> masks.

    Only the Conv/Linear layers the ``config_list`` selects are synthesised (their
    coupled BatchNorm too when the config selects BatchNorm2d), and the budget is theirs:
    a generation keeps ``env`` of what the selected layers own. Without ``env``, a uniform
    ``sparse_ratio`` (or NNI 2's ``sparsity``) sets ``env = 1 - sparse_ratio``;
    ``max_sparse_ratio`` is ``max_drop``; a ``global_group_id`` starves with one global
    multiplier; ``sparse_threshold`` and granularities other than ``out_channel`` are
    refused in one sentence. Positional arguments follow NNI's (``model, config_list,
    evaluator``). Deterministic: generation ``g`` is drawn from ``derive_seed(seed, g, 0)``.

    Args:
        model: the network (NNI wraps it until ``unwrap_model()``).
        config_list: NNI config list (``op_types``, ``op_names``, ``exclude_op_names``...).
        env, config, seed, example_inputs, unwrapped_parameters: as in the torch-pruning face
            (``config.size_tolerance`` repairs every draw to the budget).
        importance: ``"l1"`` (the paper's), ``"l2"`` or a callable on a weight tensor giving
            one strength per output channel.
        evaluator: optional NNI evaluator (unused by the one-shot draw).
        latency_table: the target's table when ``config.resource == "latency"``.
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict],
        evaluator: Any = None,
        existed_wrappers: Any = None,
        *,
        env: float | None = None,
        config: SynthesisConfig | None = None,
        seed: int = 0,
        example_inputs: torch.Tensor | None = None,
        latency_table: LatencyTable | None = None,
        importance: str | Callable[[torch.Tensor], torch.Tensor] = "l1",
        unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] | None = None,
    ) -> None:
        config = synthesis_settings(config_list, config or SynthesisConfig(), env)
        derive_seed(seed)
        self.synthesis = config
        self.seed = seed
        self.generation = 0
        self.importance = _check_importance(importance)
        self._budget_resource = None
        # trace and describe the network before NNI wraps its modules
        self._surgeon = Surgeon(model, example_inputs, unwrapped_parameters=unwrapped_parameters)
        self._resource = self._surgeon.resource_model(config.resource, latency_table)
        try:
            super().__init__(model, _with_ratio(config_list, config.env), evaluator, existed_wrappers)
        except Exception as exc:  # NNI's schema check: one sentence, not its traceback
            if type(exc).__name__ != "SchemaError":
                raise
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise InvalidArgumentError(f"config_list is not one NNI accepts ({first}).") from None

    def compress(self, max_steps: int | None = None, max_epochs: int | None = None) -> tuple[nn.Module, Masks]:
        """Draw one offspring's masks: ``(model, {module: {"weight"|"bias": mask}})``."""
        return super().compress(max_steps, max_epochs)

    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        if max_steps is not None or max_epochs is not None:
            raise InvalidArgumentError(
                "evolutionary synthesis draws masks in one shot; train the offspring between generations."
            )
        self.update_masks(self.generate_masks())

    def _fuse_preprocess(self, evaluator: Any) -> None:
        pass

    def _fuse_postprocess(self, evaluator: Any) -> None:
        pass

    # -- NNI's three stages ---------------------------------------------------------

    def _active_layers(self, data: Mapping[str, Mapping[str, torch.Tensor]]) -> list[tuple[int, PrunableLayer]]:
        return [(i, layer) for i, layer in enumerate(self._surgeon.layers) if "weight" in data.get(layer.name, {})]

    def _collect_data(self) -> dict[str, dict[str, torch.Tensor]]:
        from nni.compression.pruning.tools import active_sparse_targets_filter

        return active_sparse_targets_filter(self._target_spaces)

    def _calculate_metrics(self, data: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
        active = self._active_layers(data)
        strengths = [cluster_strength(data[layer.name]["weight"], self.importance) for _, layer in active]
        resource = None
        if self.synthesis.mode == "budget":
            restricted = self._resource.restrict([i for i, _ in active], len(self._surgeon.layers))
            resource = SelectedPart(restricted, len(active))  # the budget of what the config selects
        self._budget_resource = resource  # size_tolerance repairs the draw to it
        probs = synthesis_probabilities(strengths, self.synthesis, resource) if active else []
        return {layer.name: {"weight": p} for (_, layer), p in zip(active, probs)}

    def _generate_sparsity(self, metrics: dict[str, dict[str, torch.Tensor]]) -> Masks:
        active = [layer for layer in self._surgeon.layers if layer.name in metrics]
        self.generation += 1
        seed = derive_seed(self.seed, self.generation, 0)  # as the torch-pruning face and evolve()
        probabilities = [metrics[layer.name]["weight"] for layer in active]
        c = self.synthesis
        budget = budget_of(c, self._budget_resource) if active else None
        keep = draw(probabilities, seed, c.min_channels, c.round_to, c.max_drop, budget)
        return self._masks_for(active, keep)

    def _masks_for(self, active: list[PrunableLayer], keep: list[torch.Tensor]) -> Masks:
        """NNI masks of every selected output member of each drawn group. A member's own
        channel indices are used: through a concatenation (DenseNet's BatchNorms, Fire's
        expands) they are not the root's, and a member fed by several layers collects the
        drops of each."""
        masks: Masks = {}
        for layer, mask in zip(active, keep):
            group = self._surgeon.group(layer)
            for i, (dep, idxs) in enumerate(group):
                name = self._surgeon.names.get(dep.target.module)
                if name not in self._target_spaces or not self._surgeon.is_out(dep):
                    continue
                dropped = torch.as_tensor(idxs)[~mask[torch.as_tensor(group[i].root_idxs)]]
                for target, space in self._target_spaces[name].items():
                    if target in ("weight", "bias") and space.target is not None:
                        member = masks.setdefault(name, {}).setdefault(target, torch.ones_like(space.target))
                        member[dropped] = 0
        return masks


# -- physical application of any NNI masks ---------------------------------------------


def masks_to_plan(surgeon: Surgeon, masks: Masks) -> dict[str, torch.Tensor]:
    """Keep-masks per prunable layer: a channel goes only where *every* Conv/Linear output
    member of its group -- masked or not: a layer the config excluded keeps its channels --
    is zero once the masks apply (weight row and bias). Normalisation members follow the
    layers they belong to (see :func:`apply_masks` for what their shifts do)."""
    plan = {}
    for layer in surgeon.layers:
        group = surgeon.group(layer)
        keep = torch.zeros(layer.width, dtype=torch.bool)
        for i, (dep, idxs) in enumerate(group):
            module = dep.target.module
            if not surgeon.is_out(dep) or not isinstance(module, ROOT_TYPES):
                continue
            alive = _alive_channels(module, masks.get(surgeon.names.get(module), {}))
            keep[torch.as_tensor(group[i].root_idxs)] |= alive[torch.as_tensor(idxs)]
        if not keep.any():
            keep[0] = True  # a layer cannot vanish: one channel stays, masked to zero
        plan[layer.name] = keep
    return plan


@torch.no_grad()
def _alive_channels(module: nn.Module, masks: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
    """Per output channel of a Conv/Linear: whether its weight row or bias is non-zero once
    ``masks`` apply."""
    alive = None
    for name in ("weight", "bias"):
        param = getattr(module, name, None)
        if not isinstance(param, torch.Tensor):
            continue
        value = param.detach() * masks[name].to(param.dtype) if masks.get(name) is not None else param.detach()
        if name == "weight" and getattr(module, "transposed", False):
            value = value.transpose(0, 1)
        row = value.flatten(1).ne(0).any(1) if value.dim() > 1 else value.ne(0)
        alive = row if alive is None else alive | row
    return alive


def _pairs(model: nn.Module, masks: Masks) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(tensor, mask) pairs in name order, each checked; None masks are skipped."""
    modules = dict(model.named_modules())
    pairs = []
    for name in sorted(masks):
        module = modules.get(name)
        if module is None:
            raise InvalidArgumentError(f"masks name module {name!r}, which the model does not have.")
        for target, mask in sorted(masks[name].items()):
            param = getattr(module, target, None)
            if mask is None or not isinstance(param, torch.Tensor):
                continue
            if mask.shape != param.shape:
                raise InvalidArgumentError(
                    f"mask {name}.{target} has shape {tuple(mask.shape)}, the tensor {tuple(param.shape)}."
                )
            pairs.append((param, mask))
    return pairs


def apply_masks(
    model: nn.Module,
    masks: Masks,
    example_inputs: torch.Tensor | None = None,
    *,
    tolerance: float = 1e-4,
    strict: bool = False,
) -> nn.Module:
    """Apply NNI masks ``{module: {"weight"|"bias": mask}}`` and remove physically, through
    torch-pruning, the output channels that every Conv/Linear of their group has zero
    (in place; returns the model); their BatchNorms and consumers lose them too. A layer the
    masks leave alone is never cut, and elementwise zeros stay as zeros.

    The result is compared with *your* masked model on ``example_inputs``. A removed
    channel whose BatchNorm still adds a shift (its bias, or its running mean, left unmasked)
    fed that constant on in the masked model; NNI's ``ModelSpeedup`` drops it, and so does
    this function, with a warning that states the difference (max absolute, and as a share
    of the output's range) and names the BatchNorms. Mask their bias too to remove such
    channels exactly, or pass ``strict=True`` to refuse (the model keeps its masks, whole).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.squeezenet1_1(num_classes=10).eval()
        >>> masks = {"features.0": {"weight": torch.ones(64, 3, 3, 3), "bias": torch.ones(64)}}
        >>> masks["features.0"]["weight"][:8] = 0; masks["features.0"]["bias"][:8] = 0
        >>> apply_masks(model, masks, torch.zeros(1, 3, 64, 64)).features[0].out_channels
        56
    """
    pairs = _pairs(model, masks)
    surgeon = Surgeon(model, example_inputs)
    plan = masks_to_plan(surgeon, masks)
    with torch.no_grad():
        for param, mask in pairs:
            param.mul_(mask.to(param.dtype))
    reference = clone_model(model).eval()  # the user's masked model, as the masks make it
    shifted = _shifted_norms(surgeon, plan)
    surgeon.prune(plan)
    with EvalMode(model), torch.no_grad():
        want = reference(surgeon.example_inputs)
        diff = (model(surgeon.example_inputs) - want).abs().max().item()
    if diff > tolerance:
        share = diff / max((want.max() - want.min()).item(), 1e-12)
        where = ", ".join(shifted[:3]) + (f" and {len(shifted) - 3} more" if len(shifted) > 3 else "")
        message = (
            f"removing the masked channels changes the outputs by {diff:.2e} ({share:.1%} of their range) "
            f"against the masked model: the shifts of BatchNorms {where or '(none found)'} on removed channels "
            "were dropped, as NNI's ModelSpeedup drops them; mask those BatchNorms' bias too to remove them exactly."
        )
        if strict:
            _restore(model, reference)
            raise InvalidArgumentError(message + " (strict: the model keeps its masks, whole)")
        warnings.warn(message, stacklevel=2)
    return model


def _shifted_norms(surgeon: Surgeon, plan: Mapping[str, torch.Tensor]) -> list[str]:
    """The BatchNorms that add a non-zero shift on a channel the plan removes."""
    names = []
    for group in surgeon.drop_groups(plan):  # a preview: nothing is pruned between the groups
        for dep, idxs in group:
            module = dep.target.module
            if not surgeon.is_out(dep) or not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            if bool(_norm_shift(module)[torch.as_tensor(idxs)].ne(0).any()):
                names.append(surgeon.names[module])
    return sorted(set(names))


@torch.no_grad()
def _norm_shift(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """What a BatchNorm adds to a channel whose input is zero (eval mode)."""
    weight = bn.weight.detach() if bn.weight is not None else torch.ones(bn.num_features)
    bias = bn.bias.detach() if bn.bias is not None else torch.zeros(bn.num_features)
    if bn.running_mean is None:
        return bias
    return bias - bn.running_mean * weight / torch.sqrt(bn.running_var + bn.eps)
