"""Surgery: the one place that talks to torch-pruning (with its tracing helper, ``_tracing``).

It traces any traceable CNN into torch-pruning's ``DependencyGraph``, finds its
clusters (torch-pruning *groups*) with the classifier's outputs out of reach, tells
the resource model which layer's clusters scale which module, removes channels
physically (all or nothing) or zeroes them, and counts a network's MACs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..errors import InvalidArgumentError, UntraceableModelError
from ._arguments import batch_size, check_inputs, check_unwrapped, ignored_modules
from ._tracing import EvalMode, PrunableLayer, autograd_on, find_layers, first_line, is_out, trace
from .geometry import geometry_of
from .latency import LatencyTable, latency_model
from .resources import ROOT_TYPES, ResourceModel, resource_model

__all__ = [
    "EvalMode",
    "PrunableLayer",
    "Surgeon",
    "autograd_on",
    "clone_model",
    "count_macs",
    "default_example_inputs",
    "model_stats",
]


def default_example_inputs(model: nn.Module | None = None) -> torch.Tensor:
    """One 224x224 RGB image, the input torchvision classifiers expect; for a ``model``
    whose first layer takes another number of channels (a greyscale LeNet's 1), that many
    (a first Linear: one vector of its ``in_features``)."""
    first = next((m for m in model.modules() if isinstance(m, ROOT_TYPES)), None) if model is not None else None
    if isinstance(first, nn.Linear):
        return torch.zeros(1, first.in_features)
    channels = first.in_channels if isinstance(first, nn.Conv2d) else 3
    return torch.zeros(1, channels, 224, 224)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose tensors are ordinary ones even inside
    ``torch.inference_mode()`` (copies made there could never train or be traced)."""
    with torch.inference_mode(False):
        return copy.deepcopy(model)


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """MACs of one forward pass on ``example_inputs`` (torch-pruning's op counter)."""
    macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs)


def model_stats(model: nn.Module, example_inputs: torch.Tensor | None = None) -> dict[str, float]:
    """Parameters, size in MB (float32, the paper's measure: 4 bytes a parameter,
    10^6 bytes a MB) and MACs per image at ``example_inputs`` (224x224 by default).

    Example:
        >>> from squish_plugin import squeezenet1_1_ancestor, model_stats
        >>> model_stats(squeezenet1_1_ancestor(num_classes=10, weights=None))["params"]
        727626
    """
    if example_inputs is None:
        example_inputs = default_example_inputs()
    params = sum(p.numel() for p in model.parameters())
    with EvalMode(model):
        macs = count_macs(model, example_inputs)
    return {"params": params, "size_mb": params * 4 / 1e6, "macs": macs // batch_size(example_inputs)}


# --------------------------------------------------------------------------- the surgeon


class Surgeon:
    """A model with its dependency graph and prunable layers.

    Args:
        model: the network (left untouched by construction).
        example_inputs: what the model accepts, as torch-pruning takes it: a tensor, a tuple or
            list of positional inputs, or a dict of keyword inputs; one 224x224 RGB image by default.
        ignored_layers: modules whose output channels must never be pruned, each with
            every module inside it (as torch-pruning reads them), and parameters never to
            cut; the classifier (the last Conv/Linear the forward pass runs) is always added.
        unwrapped_parameters: ``[(parameter, pruning dim), ...]`` for parameters that
            belong to no Conv/Linear/BatchNorm (e.g. ConvNeXt's layer scale), as
            torch-pruning takes them; ``None`` lets torch-pruning guess (and warn).
        forward_fn: ``forward_fn(model, example_inputs)`` runs the model (torch-pruning's),
            for models whose forward takes inputs another way.

    ``kept_whole`` names the layers whose width stays, with the reason: a family holding a
    grouped (not depthwise) convolution or a multi-head attention, or one feeding a layer that
    runs but leaves no autograd trace (a detector's proposal head: that layer is kept as well).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | None = None,
        ignored_layers: Iterable[nn.Module | nn.Parameter] = (),
        unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] | None = None,
        forward_fn: Callable | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        guessed = example_inputs is None
        self.example_inputs = check_inputs(default_example_inputs(model) if guessed else example_inputs)
        if forward_fn is not None and not callable(forward_fn):
            raise InvalidArgumentError(f"forward_fn must be callable(model, example_inputs), got {forward_fn!r}.")
        self.forward_fn = forward_fn
        self.unwrapped_parameters = check_unwrapped(model, unwrapped_parameters)
        self.names = {m: n for n, m in model.named_modules()}
        self.ignored, self.ignored_params = ignored_modules(model, self.names, ignored_layers)
        seen = trace(
            model, self.example_inputs, self.unwrapped_parameters, self.ignored_params, forward_fn, guessed=guessed
        )
        self.graph, self.output_shapes, self.classifier = seen.graph, seen.shapes, seen.classifier
        self._in_shapes = seen.in_shapes
        self.layers, self.kept_whole, self._groups = find_layers(model, seen, set(self.ignored) | {self.classifier})
        if not self.layers:
            hint = "".join(f"; {name!r} is kept whole: {why}" for name, why in list(self.kept_whole.items())[:2])
            raise UntraceableModelError(f"the model has no prunable Conv/Linear layer besides its classifier{hint}.")

    def geometry(self) -> dict[str, dict[str, Any]]:
        """``{name: geometry}`` of every Conv2d/Linear that ran in the trace, as
        :func:`~squish_plugin.synthesis.latency.layer_geometry` gives it (no second pass)."""
        return geometry_of(self._in_shapes, self.names)

    @property
    def grouped(self) -> list[str]:
        """The layers kept whole because their family holds a grouped (not depthwise) convolution."""
        return [name for name, why in self.kept_whole.items() if "grouped convolution" in why]

    def is_out(self, dep: object) -> bool:
        """Whether a group member prunes its module's output channels."""
        return is_out(self.graph, dep)

    def group(self, layer: PrunableLayer, idxs: Sequence[int] | None = None) -> tp.Group:
        """The torch-pruning group of ``layer`` for ``idxs`` (all channels by default: built once,
        when the model was traced; read it, never prune it)."""
        pruner = self.graph.get_pruner_of_module(layer.module)
        if idxs is None:
            if layer.name in self._groups:
                return self._groups[layer.name]
            idxs = list(range(pruner.get_out_channels(layer.module)))
        return self.graph.get_pruning_group(layer.module, pruner.prune_out_channels, list(idxs))

    def couplings(self) -> tuple[dict[nn.Module, dict[int, int]], dict[nn.Module, dict[int, int]]]:
        """``(out_dims, in_dims)``: for each module, how many of its output / input
        channels each prunable layer (by index) removes with its clusters."""
        out_dims: dict[nn.Module, dict[int, int]] = {}
        in_dims: dict[nn.Module, dict[int, int]] = {}
        for index, layer in enumerate(self.layers):
            for dep, idxs in self.group(layer):
                target = out_dims if self.is_out(dep) else in_dims
                target.setdefault(dep.target.module, {})[index] = len(idxs)
        return out_dims, in_dims

    def resource_model(self, resource: str = "params", table: LatencyTable | None = None) -> ResourceModel:
        """Parameters, MACs per image or (with a latency ``table``) the target's latency
        as a function of the kept fractions."""
        if resource == "latency":
            if table is None:
                raise InvalidArgumentError('resource="latency" needs a latency table (latency_table=...).')
            return latency_model(self.model, table, *self.couplings(), self.geometry(), len(self.layers))
        batch = batch_size(self.example_inputs)
        return resource_model(self.model, *self.couplings(), self.output_shapes, batch, resource)

    # ----------------------------------------------------------------- removing channels

    def drop_groups(self, plan: Mapping[str, torch.Tensor]) -> Iterator[tp.Group]:
        """Groups holding the channels to remove, one per layer that loses any.

        ``plan`` maps each prunable layer's name to its boolean keep-mask. The plan
        is checked whole before the first group is made; each group is made only
        after the previous one was pruned, because pruning shifts the index maps of
        concatenations (Fire's expand1x1/expand3x3)."""
        dropped = self._check_plan(plan)
        for layer in self.layers:
            if dropped[layer.name]:
                yield self.group(layer, dropped[layer.name])

    def _check_plan(self, plan: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
        dropped = {}
        for layer in self.layers:
            mask = plan.get(layer.name)
            if mask is None:
                raise InvalidArgumentError(f"the plan has no keep-mask for layer {layer.name}.")
            if mask.numel() != layer.width or not bool(mask.any()):
                raise InvalidArgumentError(
                    f"keep-mask for {layer.name} must have {layer.width} entries, at least one True."
                )
            dropped[layer.name] = (~mask.bool()).nonzero().flatten().tolist()
        return dropped

    def prune(self, plan: Mapping[str, torch.Tensor]) -> None:
        """Remove the dropped channels physically. All-or-nothing: if torch-pruning
        fails half-way, the model is restored to what it was."""
        self._check_plan(plan)
        backup = _snapshot(self.model)
        try:
            with autograd_on():  # new parameters are ordinary tensors, whatever the caller's mode
                for group in self.drop_groups(plan):
                    group.prune()
        except Exception as exc:
            _put_back(backup)
            raise UntraceableModelError(
                f"torch-pruning failed to remove channels ({first_line(exc)}); model restored."
            ) from None

    @torch.no_grad()
    def zero(self, plan: Mapping[str, torch.Tensor]) -> None:
        """Zero the dropped channels instead of removing them (the masked twin of
        :meth:`prune`: same outputs in eval mode)."""
        for group in self.drop_groups(plan):
            for dep, idxs in group:
                module = dep.target.module
                if not self.is_out(dep) or not isinstance(module, nn.Module):
                    continue
                for pname in ("weight", "bias"):
                    param = getattr(module, pname, None)
                    if isinstance(param, torch.Tensor):
                        dim = 1 if getattr(module, "transposed", False) and pname == "weight" else 0
                        param.index_fill_(dim, torch.as_tensor(idxs, dtype=torch.long), 0.0)


def predict_ms(model: nn.Module, table: LatencyTable, example_inputs: torch.Tensor | None = None) -> float:
    """``table``'s latency of ``model`` as it stands (ms per batch on the table's target;
    inputs by default of the table's ``input_size``, else 224 px), layers off its lattice
    at ``off_lattice`` times their interpolated time."""
    inputs = table.example_inputs() if example_inputs is None else example_inputs
    latency = Surgeon(model, inputs).resource_model("latency", table)
    return latency.network_ms([1.0] * latency.layers)


_OWNED = ("_parameters", "_buffers")


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, object]]]:
    """Every module's attributes as they are, without copying a tensor: torch-pruning swaps in
    new parameters, buffers and widths (it never writes into a tensor it cuts), so the old
    objects kept here are the model before the cut."""
    return [
        (m, {k: dict(v) if k in _OWNED else v for k, v in m.__dict__.items() if k != "_modules"})
        for m in model.modules()
    ]


def _put_back(snapshot: list[tuple[nn.Module, dict[str, object]]]) -> None:
    """The modules of a :func:`_snapshot` as they were, in place (references stay valid)."""
    for module, state in snapshot:
        module.__dict__.update({k: dict(v) if k in _OWNED else v for k, v in state.items()})


def _restore(model: nn.Module, backup: nn.Module) -> None:
    """Put every module of ``model`` back as ``backup`` (its deep copy) has it, in place:
    the module objects stay the same (references to them stay valid), their parameters,
    buffers and widths come back."""
    for module, saved in zip(model.modules(), backup.modules()):
        module.__dict__.update({k: v for k, v in saved.__dict__.items() if k != "_modules"})
