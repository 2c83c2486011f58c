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
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError, MissingExtraError
from ..synthesis.latency import GRID_POINTS, LatencyTable, LayerGrid, grid_widths, layer_geometry
from ..synthesis.surgery import Surgeon, default_example_inputs
from .backends import _cpu_name, _time

__all__ = [
    "ROUND_TO_CANDIDATES",
    "LayerTimer",
    "calibrate_scale",
    "choose_round_to",
    "layer_macs",
    "measure_table",
    "onnxruntime_layer_timer",
    "predict_ms",
    "pytorch_layer_timer",
    "table_error",
    "target_of",
]

LayerTimer = Callable[[Mapping[str, Any], int, int], float]
ROUND_TO_CANDIDATES = (1, 2, 4, 8, 16, 32)
ROUND_TO_FRACTIONS = (0.4, 0.7)  # off-lattice widths: 0.4 and 0.7 of each representative layer's
ROUND_TO_SLACK = 0.03  # on a near tie (within 3% of the fastest) the smallest multiple wins: finer cuts


def out_hw(geo: Mapping[str, Any]) -> tuple[int, int]:
    """Output height/width of a layer of ``geo``."""
    return tuple(
        (size + 2 * pad - k) // s + 1
        for size, pad, k, s in zip(geo["in_hw"], geo["padding"], geo["kernel"], geo["stride"])
    )


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
    """Time every Conv/Linear of ``model`` at a ``points x points`` grid of widths (a
    dimension no pruning can change: its one width), each distinct (geometry, cin, cout)
    once, into a :class:`LatencyTable` (``scale`` 1; see :func:`calibrate_scale`)."""
    inputs = default_example_inputs() if example_inputs is None else example_inputs
    geometry = layer_geometry(model, inputs)
    prunable = _prunable_dims(model, inputs)
    timed: dict[tuple, float] = {}
    layers = {}
    for name, geo in geometry.items():
        free_in, free_out = prunable.get(name, (False, False))
        cins = grid_widths(geo["cin"], step, points) if free_in else (geo["cin"],)
        couts = grid_widths(geo["cout"], step, points) if free_out else (geo["cout"],)
        key = (geo["op"], geo["kernel"], geo["stride"], geo["padding"], geo["in_hw"])
        rows = []
        for cin in cins:
            for cout in couts:
                if (key, cin, cout) not in timed:
                    timed[(key, cin, cout)] = float(timer(geo, cin, cout))
            rows.append(tuple(timed[(key, cin, cout)] for cout in couts))
        layers[name] = LayerGrid(geo["op"], *key[1:], cins, couts, tuple(rows))
    meta = {**dict(notes or {}), "grid_points": points, "grid_step": step or 1, "timed_layers": len(timed)}
    return LatencyTable(dict(target or {}), layers, 1.0, round_to, meta)


def predict_ms(model: nn.Module, table: LatencyTable, example_inputs: torch.Tensor | None = None) -> float:
    """The table's latency of ``model`` as it stands (every kept fraction 1)."""
    surgeon = Surgeon(model, example_inputs)
    latency = surgeon.resource_model("latency", table)
    return latency([1.0] * latency.layers)


def calibrate_scale(table: LatencyTable, model: nn.Module, measured_ms: float) -> LatencyTable:
    """``table`` with ``scale`` = ``measured_ms`` (the whole ``model`` timed on the target)
    / the table's sum for it, so that predictions are whole-network milliseconds."""
    raw = predict_ms(model, LatencyTable(table.target, table.layers, 1.0, table.round_to, table.notes))
    if not raw > 0:
        raise InvalidArgumentError("the latency table predicts 0 ms for the ancestor: its timer returned no time.")
    notes = {**dict(table.notes), "calibrated_on_ms": round(measured_ms, 4), "layer_sum_ms": round(raw, 4)}
    return LatencyTable(table.target, table.layers, measured_ms / raw, table.round_to, notes)


def choose_round_to(
    model: nn.Module,
    timer: LayerTimer,
    *,
    example_inputs: torch.Tensor | None = None,
    candidates: Sequence[int] = ROUND_TO_CANDIDATES,
    fractions: Sequence[float] = ROUND_TO_FRACTIONS,
) -> tuple[int, dict[str, Any]]:
    """The channel multiple ``model``'s layers run fastest at on ``timer``'s target: the
    widest layer of every distinct geometry is timed with its prunable widths cut to each
    of ``fractions`` (off the lattice) and rounded *up* to each candidate ``m``; the
    multiple whose rounded-up layers take the least time in all wins (rounding up adds
    channels, so a multiple wins only where the target runs aligned widths faster), the
    smallest within :data:`ROUND_TO_SLACK` of the fastest on a near tie (finer cuts).
    Returns ``(m, the figures)``."""
    inputs = default_example_inputs() if example_inputs is None else example_inputs
    geometry = layer_geometry(model, inputs)
    prunable = _prunable_dims(model, inputs)
    widest: dict[tuple, str] = {}
    for name, geo in geometry.items():
        key = (geo["op"], geo["kernel"], geo["stride"], geo["padding"], geo["in_hw"])
        if any(prunable.get(name, (False, False))):
            best = widest.get(key)
            if best is None or geo["cin"] * geo["cout"] > geometry[best]["cin"] * geometry[best]["cout"]:
                widest[key] = name
    if not widest or any(not isinstance(m, int) or m < 1 for m in candidates):
        raise InvalidArgumentError("round_to: auto needs prunable layers and candidate multiples >= 1.")
    totals, macs = {}, {}
    for m in sorted(candidates):
        totals[m] = macs[m] = 0.0
        for name in sorted(widest.values()):
            geo, (free_in, free_out) = geometry[name], prunable[name]
            for f in fractions:
                cin = _cut(geo["cin"], f, m) if free_in else geo["cin"]
                cout = _cut(geo["cout"], f, m) if free_out else geo["cout"]
                macs[m] += layer_macs(geo, cin, cout)
                totals[m] += float(timer(geo, cin, cout))
    fastest = min(totals.values())
    chosen = min(m for m, ms in totals.items() if ms <= (1 + ROUND_TO_SLACK) * fastest)
    figures = {
        "ms": {str(m): round(v, 4) for m, v in totals.items()},
        "mmacs": {str(m): round(v / 1e6, 3) for m, v in macs.items()},
        "layers": sorted(widest.values()),
    }
    return chosen, {**figures, "fractions": list(fractions), "slack": ROUND_TO_SLACK}


def _cut(width: int, fraction: float, multiple: int) -> int:
    return min(width, -(-max(1, math.ceil(width * fraction)) // multiple) * multiple)


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


# --------------------------------------------------------------------------- real timers


def _median_ms(run: Callable[[], Any], warmup: int, runs: int) -> float:
    return statistics.median(_time(run, warmup, runs)) * 1e3


def pytorch_layer_timer(*, batch: int = 32, threads: int = 2, warmup: int = 2, runs: int = 5) -> LayerTimer:
    """Eager PyTorch on the CPU (channels_last), one layer and its ReLU per call."""
    torch.set_num_threads(threads)

    def timer(geo: Mapping[str, Any], cin: int, cout: int) -> float:
        gen = torch.Generator().manual_seed(0)
        if geo["op"] == "linear":
            layer: nn.Module = nn.Linear(cin, cout)
            x = torch.randn(batch, cin, generator=gen)
        else:
            layer = nn.Conv2d(cin, cout, geo["kernel"], geo["stride"], geo["padding"])
            layer = layer.to(memory_format=torch.channels_last)
            x = torch.randn(batch, cin, *geo["in_hw"], generator=gen).contiguous(memory_format=torch.channels_last)
        block = nn.Sequential(layer, nn.ReLU()).eval()

        def run() -> Any:
            with torch.inference_mode():
                return block(x)

        return _median_ms(run, warmup, runs)

    return timer


def onnxruntime_layer_timer(*, batch: int = 32, threads: int = 2, warmup: int = 2, runs: int = 5) -> LayerTimer:
    """ONNX Runtime's CPU execution provider, one Conv (or Gemm) + Relu graph per call,
    built with onnx.helper (no export round trip)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise MissingExtraError(
            "latency tables on onnxruntime need onnx and onnxruntime: pip install 'squish-plugin[export]'."
        ) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    rng = np.random.default_rng(0)

    def timer(geo: Mapping[str, Any], cin: int, cout: int) -> float:
        graph = _one_layer_graph(helper, TensorProto, numpy_helper, rng, geo, batch, cin, cout)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        shape = (batch, cin) if geo["op"] == "linear" else (batch, cin, *geo["in_hw"])
        feed = {"x": rng.standard_normal(shape, dtype=np.float32)}
        return _median_ms(lambda: session.run(None, feed), warmup, runs)

    return timer


def _one_layer_graph(helper, tensor_proto, numpy_helper, rng, geo, batch, cin, cout):
    if geo["op"] == "linear":
        w = numpy_helper.from_array(rng.standard_normal((cout, cin), dtype=np.float32), "w")
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
        x_shape, y_shape = [batch, cin], [batch, cout]
    else:
        w = numpy_helper.from_array(rng.standard_normal((cout, cin, *geo["kernel"]), dtype=np.float32), "w")
        pads = [*geo["padding"], *geo["padding"]]
        node = helper.make_node(
            "Conv", ["x", "w", "b"], ["y"], kernel_shape=list(geo["kernel"]), strides=list(geo["stride"]), pads=pads
        )
        x_shape, y_shape = [batch, cin, *geo["in_hw"]], [batch, cout, *out_hw(geo)]
    b = numpy_helper.from_array(np.zeros(cout, dtype=np.float32), "b")
    relu = helper.make_node("Relu", ["y"], ["z"])
    return helper.make_graph(
        [node, relu],
        "layer",
        [helper.make_tensor_value_info("x", tensor_proto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("z", tensor_proto.FLOAT, y_shape)],
        initializer=[w, b],
    )


def target_of(backend: str, *, batch: int, threads: int) -> dict[str, Any]:
    """What a table measured here ran on (recorded in the table)."""
    env: dict[str, Any] = {
        "backend": backend,
        "device": _cpu_name(),
        "threads": threads,
        "batch": batch,
        "precision": "fp32",
    }
    env["torch"] = torch.__version__
    if backend == "onnxruntime":
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
    env["load_1min"], env["cores"] = round(os.getloadavg()[0], 2), os.cpu_count()
    return env
