"""Measuring a latency table on a target: layer timers (ONNX Runtime on the CPU, eager
PyTorch), the per-layer grid of :mod:`squish_plugin.synthesis.latency`, the channel
multiple the target runs fastest (``round_to: auto``), and the check of the table's
prediction against whole networks timed on the same target.

A *layer timer* is any callable ``timer(geometry, cin, cout) -> ms per batch`` for one
Conv/Linear (with its ReLU) of ``geometry`` (op, kernel, stride, padding, input
height/width) at ``cin -> cout`` channels; tests hand in fake ones, the TX1 kit measures
the same grid with trtexec on the device.

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..synthesis.latency import GRID_POINTS, LatencyTable, LayerGeometry, LayerGrid, grid_widths, layer_geometry
from ..synthesis.resources import round_up
from ..synthesis.surgery import Surgeon, clone_model, default_example_inputs, predict_ms
from .timers import LayerTimer, onnxruntime_layer_timer, out_hw, pytorch_layer_timer, target_of

__all__ = [
    "ROUND_TO_CANDIDATES",
    "LayerTimer",
    "calibration_networks",
    "choose_round_to",
    "cut_to",
    "layer_macs",
    "measure_table",
    "onnxruntime_layer_timer",
    "predict_ms",
    "pytorch_layer_timer",
    "table_error",
    "target_of",
    "time_networks",
    "with_widths",
]

ROUND_TO_CANDIDATES = (1, 2, 4, 8, 16, 32)
ROUND_TO_FRACTIONS = (0.3, 0.45, 0.6, 0.75, 0.9)  # every prunable layer cut to these of its width: off the lattice
#: besides the ancestor, it cut to these fractions of every width (on the rounding lattice)
#: calibrates the table's scale and offset against whole networks
CALIBRATION_FRACTIONS = (0.75, 0.5, 0.3)
RANDOM_NETWORKS = 8  # and this many networks of random widths, as the synthesis draws them
ROUND_TO_SLACK = 0.03  # on a near tie (within 3% of the fastest) the smallest multiple wins: finer cuts


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
) -> LatencyTable:
    """Time every Conv/Linear of ``model`` at a ``points x points`` grid of widths
    (:func:`layer_grids`), each distinct (geometry, cin, cout) once, into a
    :class:`LatencyTable` (``scale`` 1; see :func:`~squish_plugin.deploy.calibration.fit_whole`)."""
    timed: dict[tuple, float] = {}
    layers = {}
    for name, (geo, cins, couts) in layer_grids(model, example_inputs, step, points).items():
        key = LayerGeometry.of(geo)
        rows = []
        for cin in cins:
            for cout in couts:
                if (key, cin, cout) not in timed:
                    timed[(key, cin, cout)] = float(timer(geo, cin, cout))
            rows.append(tuple(timed[(key, cin, cout)] for cout in couts))
        layers[name] = LayerGrid(geometry=key, cin=cins, cout=couts, ms=tuple(rows))
    meta = {**dict(notes or {}), "grid_points": points, "grid_step": step or 1, "timed_layers": len(timed)}
    return LatencyTable(target=dict(target or {}), layers=layers, round_to=round_to, notes=meta)


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
    fractions: Sequence[float] = ROUND_TO_FRACTIONS,
) -> tuple[int, dict[str, Any]]:
    """The channel multiple the target runs ``model`` fastest at, by timing whole networks:
    for each candidate ``m`` and each of ``fractions``, ``model`` with every prunable layer
    cut to that fraction of its width rounded *up* to ``m``, all of them timed in one call
    (``networks_timer({name: net}) -> {name: ms}``, interleaved: a host that drifts drifts for
    every candidate alike). Rounding up adds channels, so a multiple wins only where the
    target runs aligned widths faster (a whole network, because runtimes such as ONNX
    Runtime's blocked layouts pay off across layers, not in one layer alone). The multiple
    with the least time in all wins, the smallest within :data:`ROUND_TO_SLACK` of it on a
    near tie. Returns ``(m, the figures)``."""
    inputs = default_example_inputs() if example_inputs is None else example_inputs
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in candidates) or not candidates:
        raise InvalidArgumentError(f"round_to candidates must be integers >= 1, got {list(candidates)}.")
    nets = {(m, f): cut_to(model, f, m, inputs) for m in sorted(candidates) for f in fractions}
    timed = networks_timer({f"round{m}-cut{f}": net for (m, f), net in nets.items()})
    per_cut = {m: [float(timed[f"round{m}-cut{f}"]) for f in fractions] for m in sorted(candidates)}
    params = {m: sum(p.numel() for f in fractions for p in nets[(m, f)].parameters()) for m in sorted(candidates)}
    totals = {m: sum(v) for m, v in per_cut.items()}
    chosen = fastest_multiple(totals)
    figures = {"ms": {str(m): round(v, 4) for m, v in totals.items()}, "params": {str(m): v for m, v in params.items()}}
    figures["ms_per_cut"] = {str(m): [round(v, 4) for v in ms] for m, ms in per_cut.items()}
    return chosen, {**figures, "fractions": list(fractions), "slack": ROUND_TO_SLACK}


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
    models: Mapping[str, nn.Module], backend: str, *, batch: int, threads: int, size: int = 224, rounds: int = 5
) -> dict[str, float]:
    """Median ms per batch of each whole network on ``backend`` (ONNX Runtime: exported
    first), timed in ``rounds`` interleaved rounds in one process, as ``benchmarks/speed_table.py``
    times them: a machine that drifts drifts for all of them alike."""
    import tempfile

    from .backends import bench_interleaved
    from .export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        targets: dict[str, Any] = {}
        for i, name in enumerate(sorted(models)):
            if backend == "pytorch":
                targets[name] = models[name].eval()
            else:
                targets[name] = Path(tmp) / f"{i}.onnx"
                export_onnx(models[name].eval(), targets[name], batch=batch, size=size)
        kw = {"batch": batch, "size": size, "threads": threads, "rounds": rounds, "runs": 6}
        results = bench_interleaved(targets, backend=backend, **kw)
    return {r["model"]: float(r["latency_ms"]["median"]) for r in results}


def calibration_networks(
    model: nn.Module, round_to: int, example_inputs: torch.Tensor, *, count: int = RANDOM_NETWORKS, seed: int = 0
) -> dict[str, nn.Module]:
    """The whole networks a table is calibrated on: ``model``, it cut to
    :data:`CALIBRATION_FRACTIONS` of every width on the ``round_to`` lattice and (when
    ``round_to`` > 1) to :data:`ROUND_TO_FRACTIONS` exactly (off the lattice), and ``count``
    networks of seeded random widths (each layer kept at 25-100%), alternately on and off
    the lattice, as the synthesis draws them."""
    nets = {"ancestor": model}
    nets.update({f"cut-{f}": cut_to(model, f, round_to, example_inputs) for f in CALIBRATION_FRACTIONS})
    if round_to > 1:
        nets.update({f"exact-{f}": cut_to(model, f, 1, example_inputs) for f in ROUND_TO_FRACTIONS})
    layers = Surgeon(model, example_inputs).layers
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        multiple = round_to if i % 2 == 0 else 1
        widths = {layer.name: _cut(layer.width, float(rng.uniform(0.25, 1.0)), multiple) for layer in layers}
        nets[f"random-{i}"] = with_widths(model, widths, example_inputs)
    return nets
