"""``EvolutionarySynthesisPruner``: evolutionary synthesis in torch-pruning's style."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .genetics import (
    SynthesisConfig,
    budget_of,
    cluster_strength,
    derive_seed,
    draw,
    synthesis_probabilities,
)
from .latency import LatencyTable
from .strengths import DataStrengths
from .surgery import PrunableLayer, Surgeon, clone_model

__all__ = ["EvolutionarySynthesisPruner"]

Importance = Callable[..., torch.Tensor]


class EvolutionarySynthesisPruner:
    """Synthesises offspring networks from a parent by stochastic, strength-driven
    removal of channel clusters (SquishedNets' evolutionary synthesis).

    Clusters are torch-pruning groups: an output channel of a Conv/Linear plus
    everything coupled to it (Fire's expand concat, the next squeeze's inputs,
    residual adds, BatchNorm). The classifier's outputs are never pruned.

    The positional order is torch-pruning's (``model, example_inputs, importance``);
    everything else is keyword-only.

    Args:
        model: any CNN torch-pruning can trace.
        env: environmental factor in (0, 1]; overrides ``config.env``.
        config: a :class:`~squish_plugin.synthesis.genetics.SynthesisConfig` (mode, resource,
            floors, rounding, temperature). Default: ``mode="budget"`` on parameters,
            so each generation keeps about ``env`` of its parent's parameters.
        seed: generation ``g`` is drawn from ``derive_seed(seed, g, 0)``, the key
            :func:`~squish_plugin.study.engine.evolve` gives its first offspring of
            generation ``g``: a chain of ``step()`` from a seed is the lineage ``evolve``
            draws from that seed with one offspring per generation and no training between
            generations (training changes the strengths, hence the draws). The same seed
            gives the same lineage in any process.
        example_inputs: what the model accepts, as torch-pruning takes it: a tensor, a
            tuple or list of positional inputs (detection models: a list of images), or a
            dict of keyword inputs; one 224x224 RGB image by default.
        forward_fn: ``forward_fn(model, example_inputs)`` runs the model, as in
            torch-pruning, for models called another way.
        importance: cluster strength: ``"l1"`` (the filter's L1 norm, the default),
            ``"l2"``, a torch-pruning ``Importance`` (a callable on a group),
            :class:`~squish_plugin.synthesis.strengths.DataStrengths` (first-order Taylor or
            activation strengths measured on images, on the model as it is at each draw), or
            a mapping ``{layer name: one strength per output channel}`` measured once.
        ignored_layers: modules whose output channels must be left alone, each with every
            module inside it (``[model.layer4]`` protects the stage, as torch-pruning reads
            it), and ``nn.Parameter``s torch-pruning must never cut.
        unwrapped_parameters: ``[(parameter, dim), ...]`` for parameters outside any
            Conv/Linear/BatchNorm (ConvNeXt's layer scale), passed to torch-pruning.
        latency_table: with ``config.resource == "latency"``, the per-layer latency
            table of the target (:func:`~squish_plugin.synthesis.latency.load_table`;
            measured by ``squish-plugin bench table``): each offspring keeps ``env`` of
            its parent's predicted latency.

    Grouped (not depthwise) convolutions keep their width, and so does every layer
    coupled to them: torch-pruning cannot cut channel groups.

    Example:
        >>> import torchvision
        >>> from squish_plugin import EvolutionarySynthesisPruner
        >>> model = torchvision.models.squeezenet1_1(num_classes=10)
        >>> pruner = EvolutionarySynthesisPruner(model, env=0.9)
        >>> child = pruner.step()          # model pruned in place and returned
        >>> other = pruner.offspring()     # a new child; the parent stays intact
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: object = None,
        importance: str | Importance = "l1",
        *,
        env: float | None = None,
        config: SynthesisConfig | None = None,
        seed: int = 0,
        ignored_layers: Iterable[nn.Module | nn.Parameter] = (),
        unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] | None = None,
        latency_table: LatencyTable | None = None,
        forward_fn: Callable[[nn.Module, object], object] | None = None,
    ) -> None:
        if isinstance(example_inputs, (int, float)) and not isinstance(example_inputs, bool):
            raise InvalidArgumentError(
                "the second positional argument is example_inputs, as in torch-pruning's pruners; "
                f"give the environmental factor by name: EvolutionarySynthesisPruner(model, env={example_inputs!r})."
            )
        config = config or SynthesisConfig()
        if env is not None:
            config = replace(config, env=env)
        if not isinstance(importance, (str, Mapping, DataStrengths)) and not callable(importance):
            raise InvalidArgumentError(
                "importance must be 'l1', 'l2', a callable on a group, DataStrengths or a mapping of strengths, "
                f"got {importance!r}."
            )
        if isinstance(importance, str) and importance not in ("l1", "l2"):
            raise InvalidArgumentError(
                f"importance must be 'l1' or 'l2', got {importance!r} (Taylor or activation strengths "
                "measured on images: importance=DataStrengths(batches, kind))."
            )
        derive_seed(seed)  # validates
        self.model = model
        self.config = config
        self.seed = seed
        self.importance = importance
        self._measured: Mapping[str, torch.Tensor] | None = None  # DataStrengths of the model as it is
        self.generation = 0
        self.latency_table = latency_table
        self._example_inputs = example_inputs
        ignored = tuple(ignored_layers)
        self._forward_fn = forward_fn
        self._traced: Surgeon | None = Surgeon(model, example_inputs, ignored, unwrapped_parameters, forward_fn)
        # by name: pruning replaces parameter objects, the names stay
        names = {id(p): n for n, p in model.named_parameters()}
        self._unwrapped = [(names[id(p)], dim) for p, dim in self._traced.unwrapped_parameters or []]
        modules = self._traced.names
        self._ignored = [
            ("param", names[id(i)]) if isinstance(i, nn.Parameter) else ("module", modules[i]) for i in ignored
        ]

    @property
    def surgeon(self) -> Surgeon:
        """The model traced as it stands: after a ``step()`` it is traced again when next needed,
        so changes made between steps (a ViT's ``hidden_dim``) are seen, and none is paid for twice."""
        if self._traced is None:
            ignored = self._mapped_ignored(self.model)
            self._traced = Surgeon(
                self.model, self._example_inputs, ignored, self._unwrapped_of(self.model), self._forward_fn
            )
        return self._traced

    @property
    def kept_whole(self) -> dict[str, str]:
        """``{layer name: reason}`` for the layers whose width no offspring changes (a grouped
        convolution, a multi-head attention's heads, a layer feeding one autograd cannot trace)."""
        return dict(self.surgeon.kept_whole)

    @property
    def DG(self):  # noqa: N802 (torch-pruning's name)
        """torch-pruning's ``DependencyGraph`` of the current model (as ``pruner.DG`` in
        torch-pruning): inspect groups with ``pruner.DG.get_all_groups()``."""
        return self.surgeon.graph

    # ----------------------------------------------------------------- genetics

    @property
    def layers(self) -> list[PrunableLayer]:
        """The prunable layers (one per cluster family), in model order."""
        return self.surgeon.layers

    def strengths(self) -> list[torch.Tensor]:
        """Strength of every cluster, one tensor per prunable layer."""
        out, importance = [], self.importance
        if isinstance(importance, DataStrengths):
            if self._measured is None:
                self._measured = importance.measure(self.model)
            importance = self._measured
        for layer in self.surgeon.layers:
            if isinstance(importance, Mapping):
                out.append(_given_strength(importance, layer))
            elif isinstance(importance, str):
                weight = layer.module.weight
                if getattr(layer.module, "transposed", False):
                    weight = weight.transpose(0, 1)
                out.append(cluster_strength(weight, importance))
            else:
                scores = torch.as_tensor(importance(self.surgeon.group(layer)))
                out.append(scores.detach().float().flatten().abs())
        return out

    def probabilities(self) -> list[torch.Tensor]:
        """``P_synth(c)``, the survival probability of every cluster this generation."""
        return synthesis_probabilities(self.strengths(), self.config, self._resource())

    def _resource(self):
        if self.config.mode != "budget":
            return None
        return self.surgeon.resource_model(self.config.resource, self.latency_table)

    def sample(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Draw the next offspring's keep-masks, ``{layer name: bool mask}``,
        without touching the model."""
        if seed is None:  # evolve()'s key for offspring 0 of the next generation
            seed = derive_seed(self.seed, self.generation + 1, 0)
        c, resource = self.config, self._resource()
        probabilities = synthesis_probabilities(self.strengths(), c, resource)
        masks = draw(probabilities, seed, c.min_channels, c.round_to, c.max_drop, budget_of(c, resource))
        return {layer.name: m for layer, m in zip(self.surgeon.layers, masks)}

    # ----------------------------------------------------------------- offspring

    def step(self, interactive: bool = False) -> nn.Module | Iterator:
        """Synthesise the next generation in place and return the model.

        With ``interactive=True``, return a generator of torch-pruning groups (the
        channels to remove); the caller decides to ``group.prune()`` each one.
        """
        plan = self.sample()
        if interactive:
            return self._interactive(plan)
        try:
            self.surgeon.prune(plan)  # all or nothing: on failure the model is as it was
        finally:
            self._retrace()  # the graph follows the model either way; generation only on success
        self.generation += 1
        return self.model

    def _interactive(self, plan: dict[str, torch.Tensor]) -> Iterator:
        """Yield the groups; whatever the caller pruned (all, some, none: a generator closed
        early) is what the bookkeeping follows: a changed model is a new generation, traced anew."""
        before = _shapes(self.model)
        try:
            yield from self.surgeon.drop_groups(plan)
        finally:
            if _shapes(self.model) != before:
                self.generation += 1
                self._retrace()

    def offspring(self, seed: int | None = None) -> nn.Module:
        """A new child of the current model; the parent and the generation counter
        stay as they are. ``seed`` defaults to the next generation's seed."""
        plan = self.sample(seed)
        child = clone_model(self.model)
        ignored, unwrapped = self._mapped_ignored(child), self._unwrapped_of(child)
        Surgeon(child, self._example_inputs, ignored, unwrapped, self._forward_fn).prune(plan)
        return child

    def _mapped_ignored(self, other: nn.Module) -> list[nn.Module | nn.Parameter]:
        """``ignored_layers`` in ``other`` (the model after pruning, or a clone), by name."""
        found = {"module": dict(other.named_modules()), "param": dict(other.named_parameters())}
        return [found[kind][name] for kind, name in self._ignored]

    def _unwrapped_of(self, model: nn.Module) -> list[tuple[nn.Parameter, int]]:
        """The unwrapped parameters in ``model`` (an empty list is torch-pruning's ``None``)."""
        params = dict(model.named_parameters())
        return [(params[name], dim) for name, dim in self._unwrapped]

    def _retrace(self) -> None:
        self._traced = None  # traced again when next needed
        self._measured = None  # and data strengths measured again


def _given_strength(strengths: Mapping[str, torch.Tensor], layer: PrunableLayer) -> torch.Tensor:
    width = layer.width
    if layer.name not in strengths:
        raise InvalidArgumentError(f"the strengths given as importance have no entry for layer '{layer.name}'.")
    scores = torch.as_tensor(strengths[layer.name]).detach().float().flatten()
    if scores.numel() != width:
        raise InvalidArgumentError(
            f"the strengths of layer '{layer.name}' hold {scores.numel()} values; the layer has {width} channels."
        )
    return scores.abs()


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}
