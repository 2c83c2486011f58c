"""The evolution engine: synthesise -> train -> evaluate -> record, generation after
generation, with atomic checkpoints and resume.

Training and evaluation are injected callables, so the engine runs your own loops:

Example:
    >>> from squish_plugin import evolve, squeezenet1_1_ancestor
    >>> def train_fn(model, ctx): ...            # train in place; ctx.seed seeds the data order
    >>> def eval_fn(model): return {"top1": 0.0, "top5": 0.0}
    >>> lineage = evolve(squeezenet1_1_ancestor(weights=None), train_fn=train_fn,
    ...                  eval_fn=eval_fn, generations=2, env=0.9, seed=0,
    ...                  run_dir=__import__("tempfile").mkdtemp())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .errors import CheckpointError, InvalidArgumentError
from .genetics import SynthesisConfig, derive_seed
from .models import model_stats
from .persistence import atomic_write_text, load_pruned, save_pruned
from .pruner import EvolutionarySynthesisPruner

__all__ = ["GenerationContext", "Lineage", "evolve", "write_json_atomic"]

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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file beside ``path``, then rename)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        name: int(m.weight.shape[0])
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def _reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh weights for every layer (the 're-initialised offspring' control)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


def _read_lineage(run_dir: Path, seed: int) -> list[dict[str, Any]]:
    path = run_dir / LINEAGE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({type(exc).__name__}); the run cannot resume.") from None
    if not isinstance(data, dict) or data.get("format") != LINEAGE_FORMAT:
        raise CheckpointError(f"{path} is not a squish-plugin lineage ({LINEAGE_FORMAT}).")
    if data.get("seed") != seed:
        raise InvalidArgumentError(
            f"{path} was written with seed {data.get('seed')}, not {seed}: resume with the same seed."
        )
    return list(data["records"])


class _Evolution:
    """One run of :func:`evolve` (kept small: each method one phase)."""

    def __init__(self, run_dir, config, seed, train_fn, eval_fn, fitness_fn, options):
        self.run_dir = Path(run_dir)
        self.config = config
        self.seed = seed
        self.train_fn = train_fn
        self.eval_fn = eval_fn
        self.fitness_fn = fitness_fn
        self.options = options
        self.records: list[dict[str, Any]] = []

    def measure(self, model: nn.Module, ctx: GenerationContext) -> dict[str, Any]:
        what = "the ancestor" if ctx.generation == 0 else f"offspring {ctx.candidate} of generation {ctx.generation}"
        before = distributed.check_replicas(model, what)  # torchrun: every rank holds the same network
        start = time.perf_counter()
        if ctx.generation > 0 or self.options["train_ancestor"]:
            model.train()
            # layers such as Dropout draw from the global RNG: seed it from ctx.seed
            # for the call and restore it afterwards, so resume replays the same run
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)
                self.train_fn(model, ctx)
        seconds = time.perf_counter() - start
        model.eval()
        metrics = dict(self.eval_fn(model))
        stats = model_stats(model, self.options["example_inputs"])
        record = {**stats, **metrics, "train_seconds": round(seconds, 3), "widths": _widths(model)}
        if before is not None:
            after = distributed.check_replicas(model, f"{what} after training")
            record["replicas"] = {"ranks": before["ranks"], "before_training": before["fingerprint"],
                                  "after_training": after["fingerprint"]}  # fmt: skip
        return record

    def commit(self, generation: int, model: nn.Module, record: dict[str, Any]) -> None:
        name = f"checkpoints/gen_{generation:02d}.pt"
        record = {"generation": generation, **record, "checkpoint": name}
        self.records = [r for r in self.records if r["generation"] < generation] + [record]
        if distributed.is_main():  # torchrun: rank 0 alone writes
            save_pruned(model, self.run_dir / name)
            write_json_atomic(
                self.run_dir / LINEAGE_FILE,
                {"format": LINEAGE_FORMAT, "seed": self.seed, "records": self.records},
            )
        distributed.barrier()  # the checkpoint exists for every rank from here on
        if self.options["on_generation"]:
            self.options["on_generation"](record)

    def ancestor(self, model: nn.Module) -> nn.Module:
        ctx = GenerationContext(0, 0, derive_seed(self.seed, 0, 0, 1), self.run_dir)
        record = self.measure(model, ctx)
        self.commit(0, model, {"seed": self.seed, "parent": None, **record})
        return model

    def generation(self, g: int, parent: nn.Module) -> nn.Module:
        pruner = EvolutionarySynthesisPruner(
            parent,
            config=self.config,
            seed=self.seed,
            example_inputs=self.options["example_inputs"],
            importance=self.options["importance"],
        )
        children = []
        for k in range(self.options["offspring_per_generation"]):
            synth_seed = derive_seed(self.seed, g, k)
            child = pruner.offspring(seed=synth_seed)
            if self.options["reinitialize"]:
                _reinitialize(child, derive_seed(self.seed, g, k, 2))
            ctx = GenerationContext(g, k, derive_seed(self.seed, g, k, 1), self.run_dir, parent)
            children.append((synth_seed, child, ctx))
        screen = self.options["screen_fn"]
        screened = []
        if screen is not None and len(children) > 1:
            # natural selection before training: only the fittest offspring is trained
            for synth_seed, child, ctx in children:
                child.eval()
                score = float(screen(child, ctx))
                n_params = sum(p.numel() for p in child.parameters())
                screened.append({"seed": synth_seed, "screen": score, "params": n_params})
            pick = max(range(len(children)), key=lambda i: (screened[i]["screen"], -i))
            children = [children[pick]]
        best = None
        candidates = []
        for synth_seed, child, ctx in children:
            record = self.measure(child, ctx)
            fitness = self.fitness_fn(child, ctx) if self.fitness_fn else record.get("top1", 0.0)
            candidates.append({"seed": synth_seed, "fitness": float(fitness), "params": record["params"]})
            if best is None or fitness > best[0]:
                best = (fitness, child, {"seed": synth_seed, "parent": g - 1, **record})
        _, child, record = best
        if len(candidates) > 1:
            record["candidates"] = candidates
        if screened:
            record["screened"] = screened
        self.commit(g, child, record)
        return child


def evolve(
    ancestor: nn.Module,
    *,
    train_fn: TrainFn,
    eval_fn: EvalFn,
    run_dir: str | os.PathLike,
    generations: int = 15,
    env: float | None = None,
    seed: int = 0,
    config: SynthesisConfig | None = None,
    offspring_per_generation: int = 1,
    fitness_fn: FitnessFn | None = None,
    resume: bool = False,
    **options: Any,
) -> Lineage:
    """Evolve ``ancestor`` for ``generations`` generations and record the lineage.

    Per generation: synthesise ``offspring_per_generation`` children of the parent
    (one, as in the paper), train each with ``train_fn(child, ctx)`` (inherited
    weights), evaluate with ``eval_fn(child) -> {"top1": ..., ...}``, keep the child
    with the best ``fitness_fn(child, ctx)`` (default: its ``top1``), write its
    checkpoint and the lineage atomically. Generation 0 is the ancestor, trained
    too unless ``train_ancestor=False``.

    ``resume=True`` continues a run in ``run_dir`` from its last complete generation;
    with deterministic callables (seed the data order from ``ctx.seed``) it reaches
    the same lineage as an uninterrupted run.

    Other options: ``example_inputs`` (tensor), ``importance`` ("l1"/"l2"/callable),
    ``reinitialize`` (re-initialise each offspring: the control for heredity),
    ``on_generation`` (callback receiving each record), ``screen_fn`` (a cheap
    ``screen_fn(child, ctx) -> score`` run on every offspring *before* training: with
    several offspring per generation only the best-scoring one is trained).
    """
    known = {"example_inputs", "importance", "reinitialize", "on_generation", "train_ancestor", "screen_fn"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidArgumentError(f"evolve() got an unknown option {unknown[0]!r}; allowed: {sorted(known)}.")
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 0:
        raise InvalidArgumentError(f"generations must be an integer >= 0, got {generations!r}.")
    if not isinstance(offspring_per_generation, int) or offspring_per_generation < 1:
        raise InvalidArgumentError(
            f"offspring_per_generation must be an integer >= 1, got {offspring_per_generation!r}."
        )
    config = config or SynthesisConfig()
    if env is not None:
        config = replace(config, env=env)
    derive_seed(seed)
    opts = {
        "example_inputs": options.get("example_inputs"),
        "importance": options.get("importance", "l1"),
        "reinitialize": bool(options.get("reinitialize", False)),
        "on_generation": options.get("on_generation"),
        "train_ancestor": options.get("train_ancestor", True),
        "screen_fn": options.get("screen_fn"),
        "offspring_per_generation": offspring_per_generation,
    }
    run = _Evolution(run_dir, config, seed, train_fn, eval_fn, fitness_fn, opts)
    start = 0
    if resume and (run.run_dir / LINEAGE_FILE).exists():
        run.records = _read_lineage(run.run_dir, seed)
        last = run.records[-1]
        # the ancestor's own instance is reshaped, so any architecture resumes
        parent = load_pruned(run.run_dir / last["checkpoint"], model=copy.deepcopy(ancestor))
        start = last["generation"] + 1
    else:
        parent = run.ancestor(copy.deepcopy(ancestor))
        start = 1
    for g in range(start, generations + 1):
        parent = run.generation(g, parent)
    return Lineage(run.run_dir, run.records)
