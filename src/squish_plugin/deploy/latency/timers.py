"""Layer timers for latency tables: one Conv (or Linear) and its ReLU, timed alone on
ONNX Runtime's CPU provider or in eager PyTorch (``timer(geometry, cin, cout) -> ms``),
and the ONNX graphs of single layers the timers and the TX1 kit build with onnx.helper.

Example:
    >>> from squish_plugin.deploy.latency.timers import pytorch_layer_timer
    >>> geo = {"op": "conv", "kernel": (3, 3), "stride": (1, 1), "padding": (1, 1), "in_hw": (8, 8)}
    >>> pytorch_layer_timer(batch=2, threads=1, warmup=0, runs=1)(geo, 4, 8) > 0
    True
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import MissingExtraError
from ...threads import torch_threads
from ..backends import SPIN_STOP, _time, cpu_name

__all__ = ["LayerTimer", "conv_relu_chain", "onnxruntime_layer_timer", "out_hw", "pytorch_layer_timer", "target_of"]

LayerTimer = Callable[[Mapping[str, Any], int, int], float]


def out_hw(geo: Mapping[str, Any]) -> tuple[int, int]:
    """Output height/width of a layer of ``geo``."""
    return tuple(
        (size + 2 * pad - k) // s + 1
        for size, pad, k, s in zip(geo["in_hw"], geo["padding"], geo["kernel"], geo["stride"])
    )


def _median_ms(run: Callable[[], Any], warmup: int, runs: int) -> float:
    return statistics.median(_time(run, warmup, runs)) * 1e3


def pytorch_layer_timer(*, batch: int = 32, threads: int = 2, warmup: int = 2, runs: int = 5) -> LayerTimer:
    """Eager PyTorch on the CPU (channels_last), one layer and its ReLU per call, on ``threads``
    threads (the caller's count is given back after each call)."""

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

        with torch_threads(threads):
            return _median_ms(run, warmup, runs)

    return timer


def onnxruntime_layer_timer(*, batch: int = 32, threads: int = 2, warmup: int = 2, runs: int = 5) -> LayerTimer:
    """ONNX Runtime's CPU execution provider, one Conv (or Gemm) + Relu graph per call,
    built with onnx.helper (no export round trip)."""
    try:
        import onnx  # noqa: F401  (conv_relu_chain builds the graphs)
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError(
            "latency tables on onnxruntime need onnx and onnxruntime: pip install 'squish-plugin[export]'."
        ) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry(SPIN_STOP, "1")  # as the whole networks are timed
    rng = np.random.default_rng(0)

    def timer(geo: Mapping[str, Any], cin: int, cout: int) -> float:
        session = ort.InferenceSession(
            conv_relu_chain(geo, [cin, cout], batch), opts, providers=["CPUExecutionProvider"]
        )
        shape = (batch, cin) if geo["op"] == "linear" else (batch, cin, *geo["in_hw"])
        feed = {"x": rng.standard_normal(shape, dtype=np.float32)}
        return _median_ms(lambda: session.run(None, feed), warmup, runs)

    return timer


def conv_relu_chain(geo: Mapping[str, Any], widths: Sequence[int], batch: int, first: int = 0) -> bytes:
    """The one Conv+Relu ONNX builder (Gemm+Relu for Linear): a chain of layers of geometry
    ``geo`` through ``widths`` (two widths: one layer), nodes ``sq_L<first + i>``, as serialized
    ONNX; the ONNX Runtime layer timer times one layer with it, the TX1 kit whole chains."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
        k = first + i
        shape = (cout, cin) if geo["op"] == "linear" else (cout, cin, *geo["kernel"])
        inits += [
            numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32) * 0.05, f"w{k}"),
            numpy_helper.from_array(np.zeros(cout, dtype=np.float32), f"b{k}"),
        ]
        if geo["op"] == "linear":
            nodes.append(helper.make_node("Gemm", [x, f"w{k}", f"b{k}"], [f"y{k}"], name=f"sq_L{k}", transB=1))
        else:
            pads = [*geo["padding"], *geo["padding"]]
            attrs = {"kernel_shape": list(geo["kernel"]), "strides": list(geo["stride"]), "pads": pads}
            nodes.append(helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"y{k}"], name=f"sq_L{k}", **attrs))
        nodes.append(helper.make_node("Relu", [f"y{k}"], [f"z{k}"], name=f"sq_L{k}_relu"))
        x = f"z{k}"
    spatial = [] if geo["op"] == "linear" else list(geo["in_hw"])
    out_spatial = [] if geo["op"] == "linear" else list(out_hw(geo))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, widths[0], *spatial])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, widths[-1], *out_spatial])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def target_of(backend: str, *, batch: int, threads: int) -> dict[str, Any]:
    """What a table measured here ran on (recorded in the table)."""
    env: dict[str, Any] = {
        "backend": backend,
        "device": cpu_name(),
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
