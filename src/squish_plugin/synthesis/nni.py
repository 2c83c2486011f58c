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

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError, MissingExtraError
from .genetics import SynthesisConfig, cluster_strength, derive_seed, draw, synthesis_probabilities
from .latency import LatencyTable
from .resources import SelectedPart
from .surgery import EvalMode, PrunableLayer, Surgeon, clone_model

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
        env, config, seed, example_inputs: as in the torch-pruning face.
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
    ) -> None:
        config = synthesis_settings(config_list, config or SynthesisConfig(), env)
        derive_seed(seed)
        self.synthesis = config
        self.seed = seed
        self.generation = 0
        # trace and describe the network before NNI wraps its modules
        self._surgeon = Surgeon(model, example_inputs)
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
        strengths = [cluster_strength(data[layer.name]["weight"]) for _, layer in active]
        resource = None
        if self.synthesis.mode == "budget":
            restricted = self._resource.restrict([i for i, _ in active], len(self._surgeon.layers))
            resource = SelectedPart(restricted, len(active))  # the budget of what the config selects
        probs = synthesis_probabilities(strengths, self.synthesis, resource) if active else []
        return {layer.name: {"weight": p} for (_, layer), p in zip(active, probs)}

    def _generate_sparsity(self, metrics: dict[str, dict[str, torch.Tensor]]) -> Masks:
        active = [layer for layer in self._surgeon.layers if layer.name in metrics]
        self.generation += 1
        seed = derive_seed(self.seed, self.generation, 0)  # as the torch-pruning face and evolve()
        probabilities = [metrics[layer.name]["weight"] for layer in active]
        keep = draw(probabilities, seed, self.synthesis.min_channels, self.synthesis.round_to, self.synthesis.max_drop)
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
    """Keep-masks per prunable layer: a channel goes only where every masked
    out-channel member of its group (coupled convs, BatchNorm) has it fully zero;
    channels masked in some members only stay, with their zeros."""
    plan = {}
    for layer in surgeon.layers:
        group = surgeon.group(layer)
        keep = torch.zeros(layer.width, dtype=torch.bool)
        seen = False
        for i, (dep, idxs) in enumerate(group):
            name = surgeon.names.get(dep.target.module)
            mask = masks.get(name, {}).get("weight") if name else None
            if mask is None or not surgeon.is_out(dep):
                continue
            seen = True
            alive = mask.detach().flatten(1).ne(0).any(1) if mask.dim() > 1 else mask.detach().ne(0)
            keep[torch.as_tensor(group[i].root_idxs)] |= alive[torch.as_tensor(idxs)]
        if not seen:
            keep[:] = True
        elif not keep.any():
            keep[0] = True  # a layer cannot vanish: one channel stays, masked to zero
        plan[layer.name] = keep
    return plan


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
) -> nn.Module:
    """Apply NNI masks ``{module: {"weight"|"bias": mask}}`` and remove the fully
    masked output channels physically through torch-pruning (in place; returns the
    model). Channels removed from a conv are removed from its coupled BatchNorm and
    consumers too, as NNI's ``ModelSpeedup`` does. The result is checked against the
    masked model (masks propagated along the dependency graph) on ``example_inputs``;
    a difference above ``tolerance`` raises.
    """
    pairs = _pairs(model, masks)
    surgeon = Surgeon(model, example_inputs)
    plan = masks_to_plan(surgeon, masks)
    with torch.no_grad():
        for param, mask in pairs:
            param.mul_(mask.to(param.dtype))
    reference = clone_model(model)
    Surgeon(reference, surgeon.example_inputs).zero(plan)
    surgeon.prune(plan)
    reference.eval()
    with EvalMode(model), torch.no_grad():
        diff = (model(surgeon.example_inputs) - reference(surgeon.example_inputs)).abs().max().item()
    if diff > tolerance:
        raise InvalidArgumentError(
            f"the physically pruned model differs from the masked one by {diff:.2e} (> {tolerance}); "
            "the masks are not channel-structured along the dependency graph."
        )
    return model
