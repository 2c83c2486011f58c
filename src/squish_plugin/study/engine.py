"""The evolution engine: synthesise -> train -> evaluate -> record, generation after
generation, with atomic checkpoints and resume.

Training and evaluation are injected callables, so the engine runs your own loops:

Example:
    >>> from squish_plugin import EvolutionConfig, evolve, squeezenet1_1_ancestor
    >>> def train_fn(model, ctx): ...            # train in place; ctx.seed seeds the data order
    >>> def eval_fn(model): return {"top1": 0.0, "top5": 0.0}
    >>> lineage = evolve(squeezenet1_1_ancestor(weights=None), train_fn=train_fn, eval_fn=eval_fn,
    ...                  config=EvolutionConfig(generations=2), seed=0,
    ...                  run_dir=__import__("tempfile").mkdtemp())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InvalidArgumentError
from ..persistence import load_pruned, save_pruned, write_json_atomic
from ..synthesis.genetics import REINIT_STREAM, SCREEN_RNG_STREAM, TRAIN_STREAM, SynthesisConfig, derive_seed
from ..synthesis.latency import LatencyTable
from ..synthesis.pruner import EvolutionarySynthesisPruner
from ..synthesis.surgery import model_stats, predict_ms
from . import distributed
from .lineage_check import check_checkpoints, check_records

__all__ = ["LINEAGE_FILE", "EvolutionConfig", "GenerationContext", "Lineage", "evolve", "read_lineage"]

LINEAGE_FORMAT = "squish-plugin/lineage-v1"
LINEAGE_FILE = "lineage.json"


@dataclass(frozen=True)
class GenerationContext:
    """What a train/eval/fitness callable learns about the network in its hands."""

    generation: int
    candidate: int
    seed: int
    run_dir: Path
    parent: nn.Module | None = None


@dataclass
class Lineage:
    """The records of every generation (0 = the ancestor) and the run directory."""

    run_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)

    def load_model(self, generation: int) -> nn.Module:
        """The trained network of ``generation``, loaded from its checkpoint."""
        record = self.records[generation]
        return load_pruned(self.run_dir / record["checkpoint"])


TrainFn = Callable[[nn.Module, GenerationContext], Any]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
FitnessFn = Callable[[nn.Module, GenerationContext], float]


@dataclass(frozen=True, eq=False)
class EvolutionConfig:
    """How :func:`evolve` runs a lineage.

    Args:
        generations: offspring generations after the ancestor (15 in the paper).
        synthesis: how each offspring is drawn (:class:`SynthesisConfig`).
        offspring_per_generation: children drawn per generation (1, as in the paper).
        fitness_fn: ``fitness_fn(child, ctx) -> score`` choosing among several trained
            offspring, on data held out of validation (e.g. a slice of the training set);
            with more than one offspring it (or ``screen_fn``) is required: ``eval_fn``
            only reports, it never chooses.
        screen_fn: a cheap ``screen_fn(child, ctx) -> score`` run on every offspring
            *before* training: with several offspring only the best-scoring one trains.
        importance: the one knob for cluster strength: ``"l1"``, ``"l2"``, a torch-pruning
            ``Importance`` (a callable on a group), or
            :class:`~squish_plugin.synthesis.strengths.DataStrengths` (Taylor or activation
            strengths measured on images, on each parent before its offspring are drawn).
        strength_fn: deprecated (a warning): ``strength_fn(parent) -> {layer: strengths}``;
            use ``importance=DataStrengths(...)``.
        reinitialize: re-initialise each offspring (the control for heredity).
        train_ancestor: train generation 0 too.
        example_inputs: a batch the model accepts (one 224x224 image by default).
        on_generation: called with each generation's record once it is committed.
        latency_table: the target's table for ``synthesis.resource == "latency"``; every
            record then carries the network's predicted ``latency_ms``.
    """

    generations: int = 15
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    offspring_per_generation: int = 1
    fitness_fn: FitnessFn | None = None
    screen_fn: FitnessFn | None = None
    importance: str | Callable[..., torch.Tensor] = "l1"
    strength_fn: Callable[[nn.Module], Mapping[str, torch.Tensor]] | None = None
    reinitialize: bool = False
    train_ancestor: bool = True
    example_inputs: torch.Tensor | None = None
    on_generation: Callable[[dict[str, Any]], None] | None = None
    latency_table: LatencyTable | None = None

    def __post_init__(self) -> None:
        g, k = self.generations, self.offspring_per_generation
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise InvalidArgumentError(f"generations must be an integer >= 0, got {g!r}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgumentError(f"offspring_per_generation must be an integer >= 1, got {k!r}.")
        if k > 1 and self.fitness_fn is None and self.screen_fn is None:
            raise InvalidArgumentError(
                f"offspring_per_generation={k} needs a fitness_fn (or screen_fn) that scores offspring on data "
                "held out of validation, e.g. a slice of the training set; eval_fn only reports."
            )
        if self.strength_fn is not None:
            warnings.warn(
                "EvolutionConfig(strength_fn=...) is deprecated: pass importance=DataStrengths(batches, kind).",
                DeprecationWarning,
                stacklevel=3,
            )
        if not isinstance(self.synthesis, SynthesisConfig):
            raise InvalidArgumentError(f"synthesis must be a SynthesisConfig, got {type(self.synthesis).__name__}.")

    def updated(self, **keywords: Any) -> EvolutionConfig:
        """A copy with ``keywords`` replaced; ``env`` (a number) and ``config`` (a
        :class:`SynthesisConfig`) set the synthesis, as :func:`evolve`'s keywords did."""
        known = {f.name for f in fields(self)} | {"env", "config"}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise InvalidArgumentError(f"evolve() got an unknown option {unknown[0]!r}; allowed: {sorted(known)}.")
        synthesis = keywords.pop("config", None) or self.synthesis
        env = keywords.pop("env", None)
        if env is not None:
            synthesis = replace(synthesis, env=env)
        return replace(self, synthesis=synthesis, **keywords)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv/Linear, by name: a network's structure."""
    return {name: int(m.weight.shape[0]) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh weights, as such a network is trained from scratch (torchvision's SqueezeNet and
    ResNet do so): He initialisation (fan-in, ReLU gain) for every convolution and hidden
    Linear, zero biases, BatchNorm at 1 and 0, and the classifier -- the last Conv/Linear the
    model defines -- at N(0, 0.01). The controls for heredity (``evolution.reinitialize``) and
    ``compare``'s ``scratch`` use it. PyTorch's per-layer defaults (``reset_parameters``) shrink
    the signal at every layer: a SqueezeNet, which has no BatchNorm, then gives the same output
    for every image and stays at chance."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if module is layers[-1]:
                    nn.init.normal_(module.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                if module.affine:
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
            elif hasattr(module, "reset_parameters"):  # LayerNorm, attention, embeddings: their own
                module.reset_parameters()  # (modules() visits a parent before its children)


def read_lineage(run_dir: str | os.PathLike, seed: int | None = None) -> list[dict[str, Any]]:
    """The generation records of ``run_dir``'s lineage; with ``seed``, the run must have
    been written with it (a resume must replay the same seeds)."""
    path = Path(run_dir) / LINEAGE_FILE
    if not path.is_file():
        raise InvalidArgumentError(f"'{run_dir}' has no {LINEAGE_FILE}: is it a finished `squish-plugin run`?")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({type(exc).__name__}); the run cannot resume.") from None
    if not isinstance(data, dict) or data.get("format") != LINEAGE_FORMAT:
        raise CheckpointError(f"{path} is not a squish-plugin lineage ({LINEAGE_FORMAT}).")
    if seed is not None and data.get("seed") != seed:
        raise InvalidArgumentError(
            f"{path} was written with seed {data.get('seed')}, not {seed}: resume with the same seed."
        )
    return check_records(data.get("records"), path)


class _Evolution:
    """One run of :func:`evolve` (kept small: each method one phase)."""

    def __init__(self, run_dir, config: EvolutionConfig, seed: int, train_fn: TrainFn, eval_fn: EvalFn) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.seed = seed
        self.train_fn = train_fn
        self.eval_fn = eval_fn
        self.records: list[dict[str, Any]] = []
        self.screen_seconds = 0.0

    def measure(self, model: nn.Module, ctx: GenerationContext) -> dict[str, Any]:
        what = "the ancestor" if ctx.generation == 0 else f"offspring {ctx.candidate} of generation {ctx.generation}"
        before = distributed.check_replicas(model, what)  # torchrun: every rank holds the same network
        start, trained = time.perf_counter(), None
        if ctx.generation > 0 or self.config.train_ancestor:
            model.train()
            # layers such as Dropout draw from the global RNG: seed it from ctx.seed
            # for the call and restore it afterwards, so resume replays the same run
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)
                trained = self.train_fn(model, ctx)
        seconds = time.perf_counter() - start
        model.eval()
        metrics = dict(self.eval_fn(model))
        stats = model_stats(model, self.config.example_inputs)
        record = {**stats, **metrics, "train_seconds": round(seconds, 3), "widths": layer_widths(model)}
        if ctx.generation == 0:  # the layers in model order: the lineage's objects are written with sorted keys
            record["layers"] = list(record["widths"])
        if isinstance(trained, Mapping):  # what train_fn chose to record, e.g. its epochs
            record.update(trained)
        if self.config.latency_table is not None:
            record["latency_ms"] = round(predict_ms(model, self.config.latency_table, self.config.example_inputs), 4)
        if before is not None:
            after = distributed.check_replicas(model, f"{what} after training")
            record["replicas"] = {
                "ranks": before["ranks"],
                "before_training": before["fingerprint"],
                "after_training": after["fingerprint"],
            }
        return record

    def commit(self, generation: int, model: nn.Module, record: dict[str, Any]) -> None:
        name = f"checkpoints/gen_{generation:02d}.pt"
        record = {"generation": generation, **record, "checkpoint": name}
        self.records = [r for r in self.records if r["generation"] < generation] + [record]
        if distributed.is_main():  # torchrun: rank 0 alone writes
            save_pruned(model, self.run_dir / name)
            lineage = {"format": LINEAGE_FORMAT, "seed": self.seed, "records": self.records}
            write_json_atomic(self.run_dir / LINEAGE_FILE, lineage)
        distributed.barrier()  # the checkpoint exists for every rank from here on
        if self.config.on_generation:
            self.config.on_generation(record)

    def ancestor(self, model: nn.Module) -> nn.Module:
        ctx = GenerationContext(0, 0, derive_seed(self.seed, 0, 0, TRAIN_STREAM), self.run_dir)
        record = self.measure(model, ctx)
        self.commit(0, model, {"seed": self.seed, "parent": None, **record})
        return model

    def offspring(self, g: int, parent: nn.Module) -> list[tuple[int, nn.Module, GenerationContext]]:
        """``(synthesis seed, child, context)`` for each offspring of generation ``g``."""
        c = self.config
        importance = c.strength_fn(parent) if c.strength_fn else c.importance
        pruner = EvolutionarySynthesisPruner(
            parent,
            config=c.synthesis,
            seed=self.seed,
            example_inputs=c.example_inputs,
            importance=importance,
            latency_table=c.latency_table,
        )
        children = []
        for k in range(c.offspring_per_generation):
            synth_seed = derive_seed(self.seed, g, k)
            child = pruner.offspring(seed=synth_seed)
            if c.reinitialize:
                reinitialize(child, derive_seed(self.seed, g, k, REINIT_STREAM))
            children.append(
                (
                    synth_seed,
                    child,
                    GenerationContext(g, k, derive_seed(self.seed, g, k, TRAIN_STREAM), self.run_dir, parent),
                )
            )
        return children

    def screen(self, children: list) -> tuple[list, list[dict[str, Any]]]:
        """Natural selection before training: only the offspring ``screen_fn`` scores best
        goes on to train; returns it and every offspring's score."""
        screen = self.config.screen_fn
        if screen is None or len(children) <= 1:
            return children, []
        screened, start = [], time.perf_counter()
        for synth_seed, child, ctx in children:
            child.eval()
            with torch.random.fork_rng(devices=[]):  # a screen that trains (dropout) replays on resume
                torch.manual_seed(derive_seed(ctx.seed, SCREEN_RNG_STREAM))
                score = float(screen(child, ctx))
            screened.append({"seed": synth_seed, "screen": score, "params": sum(p.numel() for p in child.parameters())})
        pick = max(range(len(children)), key=lambda i: (screened[i]["screen"], -i))
        self.screen_seconds = round(time.perf_counter() - start, 3)
        return [children[pick]], screened

    def generation(self, g: int, parent: nn.Module) -> nn.Module:
        children, screened = self.screen(self.offspring(g, parent))
        best = None
        candidates = []
        for synth_seed, child, ctx in children:
            record = self.measure(child, ctx)
            # eval_fn's figures only report: a lone child needs no fitness, several need fitness_fn
            fitness = self.config.fitness_fn(child, ctx) if self.config.fitness_fn else 0.0
            candidates.append({"seed": synth_seed, "fitness": float(fitness), "params": record["params"]})
            if best is None or fitness > best[0]:
                best = (fitness, child, {"seed": synth_seed, "parent": g - 1, **record})
        _, child, record = best
        if len(candidates) > 1:
            record["candidates"] = candidates
        if screened:
            record["screened"] = screened
            record["screen_seconds"] = self.screen_seconds  # selection's cost, beside train_seconds
        self.commit(g, child, record)
        return child


def evolve(
    ancestor: nn.Module,
    *,
    train_fn: TrainFn,
    eval_fn: EvalFn,
    run_dir: str | os.PathLike,
    config: EvolutionConfig | SynthesisConfig | None = None,
    seed: int = 0,
    resume: bool = False,
    **keywords: Any,
) -> Lineage:
    """Evolve ``ancestor`` for ``config.generations`` generations and record the lineage.

    Per generation: synthesise ``offspring_per_generation`` children of the parent
    (one, as in the paper), train each with ``train_fn(child, ctx)`` (inherited
    weights; a dict it returns, e.g. ``{"epochs": 1.5}``, is recorded too), evaluate
    with ``eval_fn(child) -> {"top1": ..., ...}``, keep the child with the best
    ``fitness_fn(child, ctx)`` (never ``eval_fn``'s figures), write its checkpoint and
    the lineage atomically. Generation 0 is the ancestor, trained too unless
    ``train_ancestor=False``. ``config`` is an :class:`EvolutionConfig`; its fields may
    also be given as keywords (``generations=3, env=0.8, ...``), and a
    :class:`SynthesisConfig` as ``config`` sets the synthesis alone (the older form).

    ``resume=True`` continues a run in ``run_dir`` from its last complete generation;
    with deterministic callables (seed the data order from ``ctx.seed``) it reaches
    the same lineage as an uninterrupted run.
    """
    if isinstance(config, SynthesisConfig):
        keywords = {"config": config, **keywords}
        config = None
    config = (config or EvolutionConfig()).updated(**keywords)
    derive_seed(seed)
    run = _Evolution(run_dir, config, seed, train_fn, eval_fn)
    if resume and not (run.run_dir / LINEAGE_FILE).exists() and any(run.run_dir.glob("checkpoints/gen_*.pt")):
        raise CheckpointError(
            f"'{run.run_dir}' holds checkpoints but no {LINEAGE_FILE}: restore the lineage from a copy "
            "(resuming would train from generation 0 and overwrite every checkpoint), or start a new run."
        )
    if resume and (run.run_dir / LINEAGE_FILE).exists():
        run.records = read_lineage(run.run_dir, seed)
        check_checkpoints(run.run_dir, run.records)
        last = run.records[-1]
        # the ancestor's own instance is reshaped, so any architecture resumes
        parent = load_pruned(run.run_dir / last["checkpoint"], model=copy.deepcopy(ancestor))
        start = last["generation"] + 1
    else:
        parent = run.ancestor(copy.deepcopy(ancestor))
        start = 1
    for g in range(start, config.generations + 1):
        parent = run.generation(g, parent)
    return Lineage(run.run_dir, run.records)
