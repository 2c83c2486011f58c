"""Surgery: the one place that talks to torch-pruning's ``DependencyGraph``.

It finds the clusters (torch-pruning *groups*) of any traceable CNN, keeps the
classifier's outputs out of reach, describes the network's parameters and MACs as
a :class:`~squish_plugin.genetics.ResourceModel`, and removes channels physically.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .errors import InvalidArgumentError, UntraceableModelError
from .genetics import LinearForm, ResourceModel, ResourceTerm

__all__ = ["PrunableLayer", "Surgeon", "default_example_inputs"]

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def default_example_inputs() -> torch.Tensor:
    """One 224x224 RGB image, the input torchvision classifiers expect."""
    return torch.zeros(1, 3, 224, 224)


@dataclass(frozen=True)
class PrunableLayer:
    """A prunable layer: the root module of a torch-pruning group and its width."""

    name: str
    module: nn.Module
    width: int


class EvalMode:
    """Run a block in eval mode (no BatchNorm statistics drift), then restore each
    module's own training flag."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Surgeon:
    """Wraps a model and its dependency graph.

    Args:
        model: the network (left untouched by construction).
        example_inputs: a tensor the model accepts; one 224x224 RGB image by default.
        ignored_layers: modules whose output channels must never be pruned. The
            classifier (the last Conv/Linear the forward pass runs) is always added.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | None = None,
        ignored_layers: Iterable[nn.Module] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(
                f"model must be a torch.nn.Module, got {type(model).__name__}."
            )
        self.model = model
        self.example_inputs = (
            default_example_inputs() if example_inputs is None else example_inputs
        )
        if not isinstance(self.example_inputs, torch.Tensor):
            raise InvalidArgumentError(
                "example_inputs must be a torch.Tensor batch, "
                f"got {type(self.example_inputs).__name__}."
            )
        self.ignored = list(ignored_layers)
        self.names = {m: n for n, m in model.named_modules()}
        for module in self.ignored:
            if module not in self.names:
                raise InvalidArgumentError("every module in ignored_layers must belong to the model.")
        self._shapes = self._probe()
        self.classifier = self._shapes["__last__"]
        self.graph = self._trace()
        self.layers = self._find_layers()
        if not self.layers:
            raise UntraceableModelError(
                "the model has no prunable Conv/Linear layer besides its classifier."
            )

    # ----------------------------------------------------------------- tracing

    def _probe(self) -> dict:
        """One forward pass with hooks: output shapes per layer and the classifier."""
        shapes: dict = {}
        order: list[nn.Module] = []

        def hook(module: nn.Module, _inp: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                shapes[module] = tuple(out.shape)
                order.append(module)

        handles = [
            m.register_forward_hook(hook)
            for m in self.model.modules()
            if isinstance(m, ROOT_TYPES)
        ]
        try:
            with EvalMode(self.model), torch.no_grad():
                self.model(self.example_inputs)
        except Exception as exc:  # the user's model raised: report, don't crash
            raise InvalidArgumentError(
                f"example_inputs of shape {tuple(self.example_inputs.shape)} do not fit "
                f"the model ({_first_line(exc)})."
            ) from None
        finally:
            for h in handles:
                h.remove()
        if not order:
            raise UntraceableModelError("the model runs no Conv or Linear layer, nothing to prune.")
        shapes["__last__"] = order[-1]
        return shapes

    def _trace(self) -> tp.DependencyGraph:
        model_name = type(self.model).__name__
        try:
            with EvalMode(self.model):
                graph = tp.DependencyGraph().build_dependency(
                    self.model, example_inputs=self.example_inputs
                )
        except Exception as exc:
            raise UntraceableModelError(
                f"torch-pruning cannot trace {model_name} ({_first_line(exc)})."
            ) from None
        lost = [self.names[m] for m in self._shapes if m != "__last__" and m not in graph.module2node]
        if lost:
            # a layer that ran but left no autograd trace (no_grad, detach, numpy, an
            # integer output): its couplings are unknown, so pruning it is unsafe
            raise UntraceableModelError(
                f"torch-pruning cannot trace {model_name}: layer {lost[0]!r} runs in forward but "
                "leaves no autograd trace (no_grad, detach, numpy or a non-float output)."
            )
        return graph

    def is_out(self, dep: object) -> bool:
        """Whether a group member prunes its module's output channels."""
        return self.graph.is_out_channel_pruning_fn(dep.handler)  # type: ignore[attr-defined]

    def _find_layers(self) -> list[PrunableLayer]:
        protected = set(self.ignored) | {self.classifier}
        protected |= set(self.graph.IGNORED_LAYERS_IN_TRACING)
        visited: set[nn.Module] = set()
        layers = []
        for name, module in self.model.named_modules():
            if not isinstance(module, ROOT_TYPES) or module in visited:
                continue
            if module not in self.graph.module2node:
                continue  # never ran in forward
            pruner = self.graph.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None:
                continue
            width = pruner.get_out_channels(module)
            group = self.graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
            coupled = {dep.target.module for dep, _ in group if self.is_out(dep)}
            visited |= coupled
            if coupled & protected or width < 1:
                continue
            layers.append(PrunableLayer(name, module, width))
        return layers

    # ----------------------------------------------------------------- groups

    def group(self, layer: PrunableLayer, idxs: Sequence[int] | None = None) -> tp.Group:
        """The torch-pruning group of ``layer`` for ``idxs`` (all channels by default)."""
        pruner = self.graph.get_pruner_of_module(layer.module)
        if idxs is None:
            idxs = list(range(pruner.get_out_channels(layer.module)))
        return self.graph.get_pruning_group(layer.module, pruner.prune_out_channels, list(idxs))

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
        backup = copy.deepcopy(self.model)
        try:
            for group in self.drop_groups(plan):
                group.prune()
        except Exception as exc:
            self.model.__dict__.update(backup.__dict__)
            raise UntraceableModelError(
                f"torch-pruning failed to remove channels ({_first_line(exc)}); model restored."
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

    # ----------------------------------------------------------------- resources

    def resource_model(self, resource: str = "params") -> ResourceModel:
        """Parameters (or MACs per image) as a polynomial of the kept fractions."""
        out_dims: dict[nn.Module, dict[int, int]] = {}
        in_dims: dict[nn.Module, dict[int, int]] = {}
        for index, layer in enumerate(self.layers):
            for dep, idxs in self.group(layer):
                target = out_dims if self.is_out(dep) else in_dims
                target.setdefault(dep.target.module, {})[index] = len(idxs)
        batch = max(int(self.example_inputs.shape[0]), 1)
        terms: list[ResourceTerm] = []
        for module in self.model.modules():
            own = [p for p in module.parameters(recurse=False)]
            if not own:
                continue
            terms.extend(self._terms(module, own, out_dims, in_dims, resource, batch))
        return ResourceModel(tuple(terms))

    def _terms(self, module, own, out_dims, in_dims, resource, batch) -> list[ResourceTerm]:
        def form(total: int, coupled: dict[int, int]) -> LinearForm:
            return LinearForm(total - sum(coupled.values()), tuple(sorted(coupled.items())))

        if isinstance(module, ROOT_TYPES) and not getattr(module, "transposed", False):
            if isinstance(module, nn.Linear):
                n_out, n_in, kernel, groups = module.out_features, module.in_features, 1, 1
            else:
                n_out, n_in = module.out_channels, module.in_channels
                kernel, groups = math.prod(module.kernel_size), module.groups
            out_f = form(n_out, out_dims.get(module, {}))
            in_f = form(n_in, in_dims.get(module, {})) if groups == 1 else LinearForm(n_in // groups)
            if resource == "macs":
                shape = self._shapes.get(module, ())
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
            out_f = form(module.num_features, out_dims.get(module, {}))
            return [ResourceTerm(float(len(own)), (out_f,))]
        # anything else keeps its size (an approximation for exotic layers)
        return [ResourceTerm(float(sum(p.numel() for p in own)))]
