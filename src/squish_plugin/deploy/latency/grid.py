"""The grid a latency table times (every Conv/Linear at a grid of widths), the channel
multiple the target runs fastest (``round_to: auto``), the one calibration set of whole
networks (the CPU's and the TX1 kit's), and whole networks timed interleaved.

Example:
    >>> from squish_plugin import squeezenet1_1_ancestor
    >>> from squish_plugin.deploy.latency import measure_table
    >>> fake = lambda geo, cin, cout: 1e-6 * cin * cout * geo["in_hw"][0] * geo["in_hw"][1]
    >>> table = measure_table(squeezenet1_1_ancestor(num_classes=10, weights=None), fake, points=2)
    >>> sorted(table.layers)[:2]
    ['classifier.1', 'features.0']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import InvalidArgumentError
from ...synthesis.latency import GRID_POINTS, LatencyTable, LayerGeometry, LayerGrid, grid_widths, layer_geometry
from ...synthesis.resources import round_up
from ...synthesis.surgery import Surgeon, clone_model, default_example_inputs, predict_ms
from .timers import LayerTimer, out_hw

__all__ = [
    "GRID_PASSES",
    "LINEAGES",
    "RANDOM_NETWORKS",
    "ROUND_TO_CANDIDATES",
    "ROUND_TO_FRACTIONS",
    "calibration_members",
    "calibration_networks",
    "choose_round_to",
    "cut_to",
    "fastest_multiple",
    "layer_grids",
    "layer_macs",
    "measure_table",
    "round_to_from_times",
    "table_error",
    "time_networks",
    "with_widths",
]

ROUND_TO_CANDIDATES = (1, 2, 4, 8, 16, 32)
ROUND_TO_FRACTIONS = (0.3, 0.45, 0.6, 0.75, 0.9)  # every prunable layer cut to these of its width: off the lattice
RANDOM_NETWORKS = 8  # and this many networks of random widths, as the synthesis draws them
LINEAGES = 4  # and this many lineages drawn by the synthesis itself (benchmarks/README.md, issue #28 B) ...
LINEAGE_STEPS = 7  # ... of this many offspring, each keeping LINEAGE_ENV of its parent's parameters
LINEAGE_ENV = 0.64  # two of the studies' generations at env 0.8: the seventh is at 4% of the ancestor
ROUND_TO_SLACK = 0.03  # on a near tie (within 3% of the fastest) the smallest multiple wins: finer cuts
GRID_PASSES = 3  # passes over the whole grid; each point keeps its fastest (benchmarks/latency_probes.py)


def layer_macs(geo: Mapping[str, Any], cin: int, cout: int) -> int:
    """Multiply-accumulates of one image through a layer of ``geo`` at ``cin -> cout``."""
    return math.prod(geo["kernel"]) * cin * cout * math.prod(out_hw(geo))


def _prunable_dims(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, tuple[bool, bool]]:
    """``{layer: (input channels prunable, output channels prunable)}`` from the couplings."""
    surgeon = Surgeon(model, example_inputs)
    out_dims, in_dims = surgeon.couplings()
    return {name: (bool(in_dims.get(m)), bool(out_dims.get(m))) for m, name in surgeon.names.items()}


def measure_table(
    model: nn.Module,
    timer: LayerTimer,
    *,
    example_inputs: torch.Tensor | None = None,
    step: int | None = None,
    points: int = GRID_POINTS,
    target: Mapping[str, Any] | None = None,
    round_to: int | None = None,
    notes: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], Any] | None = None,
    below_grid: str = "extrapolate",
    passes: int = GRID_PASSES,
) -> LatencyTable:
    """Time every Conv/Linear of ``model`` at a ``points x points`` grid of widths
    (:func:`layer_grids`), each distinct (geometry, cin, cout) once per pass, into a
    :class:`LatencyTable` (``scale`` 1; see :func:`~squish_plugin.deploy.latency.calibration.fit_whole`);
    ``progress(done, total)`` hears of every point timed; ``below_grid`` is how the table
    prices a layer narrower than its grid's first width (:class:`LatencyTable`). The grid is
    timed ``passes`` times over, point after point, and each point keeps its fastest: on a
    shared host a burst slows a stretch of one pass, never speeds one up."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise InvalidArgumentError(f"passes must be an integer >= 1, got {passes!r}.")
    grids = {
        name: (LayerGeometry.of(geo), geo, cins, couts)
        for name, (geo, cins, couts) in layer_grids(model, example_inputs, step, points).items()
    }
    plan = {(key, cin, cout): geo for key, geo, cins, couts in grids.values() for cin in cins for cout in couts}
    timed: dict[tuple, float] = {}
    for done, ((key, cin, cout), geo) in enumerate((p for _ in range(passes) for p in plan.items()), 1):
        timed[(key, cin, cout)] = min(float(timer(geo, cin, cout)), timed.get((key, cin, cout), math.inf))
        if progress is not None:
            progress(done, passes * len(plan))
    layers = {}
    for name, (key, _, cins, couts) in grids.items():
        rows = tuple(tuple(timed[(key, cin, cout)] for cout in couts) for cin in cins)
        layers[name] = LayerGrid(geometry=key, cin=cins, cout=couts, ms=rows)
    meta = {**dict(notes or {}), "grid_points": points, "grid_step": step or 1, "timed_layers": len(plan)}
    meta.update(grid_passes=passes)
    return LatencyTable(target=dict(target or {}), layers=layers, round_to=round_to, notes=meta, below_grid=below_grid)


def layer_grids(
    model: nn.Module, example_inputs: torch.Tensor | None, step: int | None, points: int = GRID_POINTS
) -> dict[str, tuple[dict[str, Any], tuple[int, ...], tuple[int, ...]]]:
    """``{layer: (geometry, input widths, output widths)}`` of the grid a table times (a
    dimension no pruning can change: its one width)."""
    inputs = default_example_inputs() if example_inputs is None else example_inputs
    prunable = _prunable_dims(model, inputs)
    grids = {}
    for name, geo in layer_geometry(model, inputs).items():
        free_in, free_out = prunable.get(name, (False, False))
        cins = grid_widths(geo["cin"], step, points) if free_in else (geo["cin"],)
        couts = grid_widths(geo["cout"], step, points) if free_out else (geo["cout"],)
        grids[name] = (geo, cins, couts)
    return grids


def choose_round_to(
    model: nn.Module,
    networks_timer: Callable[[Mapping[str, nn.Module]], Mapping[str, float]],
    *,
    example_inputs: torch.Tensor | None = None,
    candidates: Sequence[int] = ROUND_TO_CANDIDATES,
) -> tuple[int, dict[str, Any]]:
    """The channel multiple the target runs ``model`` fastest at, by timing whole networks:
    for each candidate ``m`` and each of :data:`ROUND_TO_FRACTIONS`, ``model`` with every
    prunable layer cut to that fraction of its width rounded *up* to ``m``, all of them timed
    in one call (``networks_timer({name: net}) -> {name: ms}``, interleaved: a host that
    drifts drifts for every candidate alike). Rounding up adds channels, so a multiple wins
    only where the target runs aligned widths faster (a whole network, because runtimes such
    as ONNX Runtime's blocked layouts pay off across layers, not in one layer alone). The
    rule is :func:`round_to_from_times`'. A table's measurement times these networks with its
    calibration set instead (:func:`calibration_networks` holds them). Returns ``(m, the
    figures)``."""
    inputs = default_example_inputs() if example_inputs is None else example_inputs
    if not candidates or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in candidates):
        raise InvalidArgumentError(f"round_to candidates must be integers >= 1, got {list(candidates)}.")
    nets = _round_cuts(model, sorted(set(candidates)), inputs)
    return round_to_from_times(networks_timer(nets), candidates, nets)


def round_to_from_times(
    measured_ms: Mapping[str, float], candidates: Sequence[int], nets: Mapping[str, nn.Module] | None = None
) -> tuple[int, dict[str, Any]]:
    """The multiple with the least time over its ``round{m}-cut{f}`` networks in all, the
    smallest within :data:`ROUND_TO_SLACK` of it on a near tie, and the figures (with the
    candidates' parameters when ``nets`` are given)."""
    per_cut = {m: [float(measured_ms[f"round{m}-cut{f}"]) for f in ROUND_TO_FRACTIONS] for m in sorted(candidates)}
    totals = {m: sum(v) for m, v in per_cut.items()}
    figures: dict[str, Any] = {"ms": {str(m): round(v, 4) for m, v in totals.items()}}
    if nets is not None:
        params = {m: sum(_params(nets[f"round{m}-cut{f}"]) for f in ROUND_TO_FRACTIONS) for m in per_cut}
        figures["params"] = {str(m): v for m, v in params.items()}
    figures["ms_per_cut"] = {str(m): [round(v, 4) for v in ms] for m, ms in per_cut.items()}
    figures.update(fractions=list(ROUND_TO_FRACTIONS), slack=ROUND_TO_SLACK)
    return fastest_multiple(totals), figures


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def fastest_multiple(totals: Mapping[int, float]) -> int:
    """The multiple with the least time, the smallest within :data:`ROUND_TO_SLACK` of it."""
    fastest = min(totals.values())
    return min(m for m, ms in totals.items() if ms <= (1 + ROUND_TO_SLACK) * fastest)


def with_widths(
    model: nn.Module,
    widths: Mapping[str, int] | Callable[[int], int],
    example_inputs: torch.Tensor | None = None,
) -> nn.Module:
    """A copy of ``model`` whose every prunable layer keeps its first channels: ``widths[name]``
    of them, or ``widths(width)`` when ``widths`` is a function (structure only: which channels
    does not matter to a timer)."""
    net = clone_model(model)
    surgeon = Surgeon(net, example_inputs)
    plan = {}
    for layer in surgeon.layers:
        keep = torch.zeros(layer.width, dtype=torch.bool)
        keep[: widths(layer.width) if callable(widths) else widths[layer.name]] = True
        plan[layer.name] = keep
    surgeon.prune(plan)
    return net


def cut_to(model: nn.Module, fraction: float, multiple: int, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` whose every prunable layer keeps its first ``fraction`` of its
    channels, rounded up to ``multiple``."""
    return with_widths(model, lambda width: _cut(width, fraction, multiple), example_inputs)


def _cut(width: int, fraction: float, multiple: int) -> int:
    return min(width, round_up(max(1, math.ceil(width * fraction)), multiple))


def table_error(table: LatencyTable, models: Mapping[str, nn.Module], measured_ms: Mapping[str, float]) -> dict:
    """Predicted vs measured whole-network ms per model, and the relative error."""
    rows = {}
    for name in sorted(models):
        predicted = predict_ms(models[name], table)
        rows[name] = {
            "predicted_ms": round(predicted, 4),
            "measured_ms": round(float(measured_ms[name]), 4),
            "error": round(predicted / float(measured_ms[name]) - 1.0, 4),
        }
    return rows


# --------------------------------------------------------------------------- whole networks


def time_networks(
    models: Mapping[str, nn.Module],
    backend: str,
    *,
    batch: int,
    threads: int,
    size: int = 224,
    rounds: int = 5,
    progress: Callable[[int, int], Any] | None = None,
) -> dict[str, float]:
    """Ms per batch of each whole network on ``backend`` (ONNX Runtime: exported first): the
    median of its fastest round, timed in ``rounds`` interleaved rounds in one process, so a
    machine that drifts drifts for all of them alike (``progress(done, total)`` per network and
    round). The fastest round, not the median of all: on a shared host other tenants' bursts
    slow some rounds (round-to-round variation 9-12% even with ONNX Runtime's threads stopped
    between runs), never speed one up (``benchmarks/timing_noise.py``, issue #28)."""
    import tempfile

    from ..backends import bench_interleaved
    from ..export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        targets: dict[str, Any] = {}
        for i, name in enumerate(sorted(models)):
            if backend == "pytorch":
                targets[name] = models[name].eval()
            else:
                targets[name] = Path(tmp) / f"{i}.onnx"
                export_onnx(models[name].eval(), targets[name], batch=batch, size=size)
        kw = {"batch": batch, "size": size, "threads": threads, "rounds": rounds, "runs": 6, "progress": progress}
        results = bench_interleaved(targets, backend=backend, **kw)
    return {r["model"]: float(min(r["round_medians_ms"])) for r in results}


def calibration_networks(
    model: nn.Module,
    round_to: int | Sequence[int],
    example_inputs: torch.Tensor,
    *,
    count: int = RANDOM_NETWORKS,
    lineages: int = LINEAGES,
    seed: int = 0,
) -> dict[str, nn.Module]:
    """The one set of whole networks a table is calibrated on, on the CPU and on the TX1 kit
    alike: ``model`` (``ancestor``), it cut to each of :data:`ROUND_TO_FRACTIONS` of every
    width rounded up to each multiple (``round{m}-cut{f}``: the multiples are ``round_to``'s
    candidates, or ``(1, round_to)`` for one multiple; these also choose ``round_to: auto``,
    timed in the same call), and ``count`` networks of seeded random widths (each layer kept at
    25-100%; ``random-{i}``), alternately on the lattice of every multiple and off it, as the
    synthesis draws them, and ``lineages`` chains of offspring drawn by the synthesis itself
    (:func:`_lineages`; ``lineage{j}-{g}``), where the studies' networks live: small, starved
    layer by layer, on the lattice and off it. :func:`calibration_members` names those that
    calibrate a table on one multiple."""
    multiples = sorted({1, round_to} if isinstance(round_to, int) else {1, *round_to})
    nets = {"ancestor": model, **_round_cuts(model, multiples, example_inputs)}
    layers = Surgeon(model, example_inputs).layers if count or lineages else []
    every = math.lcm(*multiples)  # a width on this lattice is on every multiple's
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        multiple = every if i % 2 == 0 else 1
        widths = {layer.name: _cut(layer.width, float(rng.uniform(0.25, 1.0)), multiple) for layer in layers}
        nets[f"random-{i}"] = with_widths(model, widths, example_inputs)
    return {**nets, **_lineages(model, layers, every, example_inputs, lineages, seed)}


def _lineages(
    model: nn.Module, layers: Sequence, every: int, inputs: torch.Tensor, count: int, seed: int
) -> dict[str, nn.Module]:
    """``lineage{j}-{g}``: ``count`` chains of :data:`LINEAGE_STEPS` offspring, each drawn by
    :class:`~squish_plugin.EvolutionarySynthesisPruner` as the studies draw theirs (budget mode,
    every layer starved alike, temperature 0.05, repaired to :data:`LINEAGE_ENV` of its
    parent's parameters), from ``model`` with seeded random weights (the set does not depend on
    the weights it is given); even chains on the ``every`` lattice, odd ones off it. The widths
    drawn for one architecture (``layers``: its prunable layers) are kept for the process
    (drawing takes ~1 s per offspring)."""
    if not count:
        return {}
    shape = tuple((layer.name, layer.width) for layer in layers)
    key = (type(model).__qualname__, shape, tuple(inputs.shape), every, count, seed)
    if key not in _LINEAGE_WIDTHS:
        _LINEAGE_WIDTHS[key] = _draw_lineages(model, every, inputs, count, seed)
    return {name: with_widths(model, widths, inputs) for name, widths in _LINEAGE_WIDTHS[key].items()}


_LINEAGE_WIDTHS: dict[tuple, dict[str, dict[str, int]]] = {}


def _draw_lineages(
    model: nn.Module, every: int, inputs: torch.Tensor, count: int, seed: int
) -> dict[str, dict[str, int]]:
    from ...synthesis.genetics import CALIBRATION_STREAM, SynthesisConfig, derive_seed
    from ...synthesis.pruner import EvolutionarySynthesisPruner

    drawn = {}
    for j in range(count):
        chain_seed = derive_seed(seed, CALIBRATION_STREAM, j)  # the chain's weights and its draws
        child, generator = clone_model(model), torch.Generator().manual_seed(chain_seed)
        with torch.no_grad():
            for parameter in child.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        lattice = every if j % 2 == 0 else None
        config = SynthesisConfig(env=LINEAGE_ENV, mode="budget", resource="params", temperature=0.05,
                                 starvation="layer", size_tolerance=0.005, round_to=lattice)  # fmt: skip
        pruner = EvolutionarySynthesisPruner(child, inputs, "l1", config=config, seed=chain_seed)
        for g in range(1, LINEAGE_STEPS + 1):
            child = pruner.step()
            drawn[f"lineage{j}-{g}"] = {layer.name: layer.width for layer in Surgeon(child, inputs).layers}
    return drawn


def calibration_members(names: Iterable[str], round_to: int) -> list[str]:
    """Those of :func:`calibration_networks`' ``names`` that calibrate a table on the
    ``round_to`` lattice: the ancestor, the cuts on that lattice and off it (``round1``), the
    random widths and the lineages (sorted)."""
    keep = {"ancestor"} | {f"round{m}-cut{f}" for m in {1, round_to} for f in ROUND_TO_FRACTIONS}
    return sorted(n for n in names if n in keep or n.startswith(("random-", "lineage")))


def _round_cuts(model: nn.Module, multiples: Sequence[int], inputs: torch.Tensor) -> dict[str, nn.Module]:
    """``round{m}-cut{f}``: ``model`` cut to each of :data:`ROUND_TO_FRACTIONS` of every width,
    rounded up to each of ``multiples``."""
    return {f"round{m}-cut{f}": cut_to(model, f, m, inputs) for m in multiples for f in ROUND_TO_FRACTIONS}
