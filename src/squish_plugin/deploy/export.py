"""ONNX export for TensorRT 8.2 (Jetson TX1): opset <= 13, onnxsim, checker, parity
with PyTorch through ONNX Runtime, and a static check of the operators TensorRT 8.2's
ONNX parser supports.

Needs the ``export`` extra: ``pip install 'squish-plugin[export]'``.

Example:
    >>> import torchvision
    >>> from squish_plugin.deploy.export import export_onnx
    >>> result = export_onnx(torchvision.models.squeezenet1_1(num_classes=10), "/tmp/sq.onnx")  # doctest: +SKIP
    >>> result["unsupported_ops"]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError, MissingExtraError
from ..persistence import atomic_file

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "export_onnx",
    "onnx_input",
    "onnx_parity",
    "trt_op_support",
    "unsupported_ops",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _need(module: str, purpose: str = "ONNX export"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module}: install it with pip install 'squish-plugin[export]'."
        ) from None


def onnx_input(path: str | os.PathLike) -> tuple[str, list[int | None]]:
    """The name and dimensions (``None`` where dynamic) of the ONNX file's one input.

    Raises :class:`InvalidArgumentError` for a file onnx cannot read or a graph
    without exactly one input (initializers listed as inputs aside).
    """
    onnx = _need("onnx", "reading the ONNX input's name and shape")
    path = os.fspath(path)
    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError, onnx's own errors, OSError: all mean "not readable"
        raise InvalidArgumentError(f"ONNX file {path!r} could not be read by onnx ({exc}).") from None
    weights = {w.name for w in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise InvalidArgumentError(f"ONNX file {path!r} has the inputs {names!r}; the benchmark feeds exactly one.")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


@functools.cache
def trt_op_support() -> dict[str, Any]:
    """TensorRT 8.2's ONNX operator support, kept as data with its source noted."""
    text = resources.files(__package__).joinpath("trt82_onnx_ops.json").read_text()
    return json.loads(text)


def unsupported_ops(path: str | os.PathLike) -> list[str]:
    """Operator types in the ONNX file that TensorRT 8.2's parser does not support."""
    onnx = _need("onnx")
    model = onnx.load(str(path))
    supported = set(trt_op_support()["supported"])
    return sorted({node.op_type for node in model.graph.node} - supported)


def onnx_parity(model: nn.Module, path: str | os.PathLike, inputs: torch.Tensor) -> float:
    """Max abs difference between PyTorch and ONNX Runtime (CPU) on ``inputs``."""
    ort = _need("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model.eval()(inputs).numpy()
    got = session.run(None, {INPUT_NAME: inputs.numpy()})[0]
    return float(abs(got - expected).max())


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = 13,
    batch: int | None = None,
    size: int = 224,
    simplify: bool = True,
    parity_tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` to one self-contained ONNX file at ``path`` (atomically).

    ``batch=None`` gives a dynamic batch axis, an int a fixed batch. The file is
    checked with ``onnx.checker``, simplified with onnxsim (when ``simplify``),
    compared with PyTorch through ONNX Runtime (max abs difference must be <=
    ``parity_tolerance``) and scanned for operators TensorRT 8.2 cannot parse.
    Returns ``{"path", "opset", "batch", "simplified", "max_abs_diff", "ops", "unsupported_ops"}``.
    """
    onnx = _need("onnx")
    if not isinstance(opset, int) or not 7 <= opset <= 13:
        raise InvalidArgumentError(f"opset must be an integer in 7..13 (TensorRT 8.2 parses up to 13), got {opset!r}.")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise InvalidArgumentError(f"batch must be None (dynamic) or an integer >= 1, got {batch!r}.")
    model = model.eval()
    example = torch.randn(batch or 1, 3, size, size, generator=torch.Generator().manual_seed(0))
    dynamic = None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            model,
            (example,),
            str(raw),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
        )
        proto = onnx.load(str(raw))
    onnx.checker.check_model(proto)
    simplified = False
    if simplify:
        onnxsim = _need("onnxsim")
        candidate, ok = onnxsim.simplify(proto)
        if ok:
            proto, simplified = candidate, True
    with atomic_file(path, "wb") as fh:
        fh.write(proto.SerializeToString())
    diff = onnx_parity(model, path, example)
    if diff > parity_tolerance:
        raise InvalidArgumentError(f"ONNX Runtime and PyTorch differ by {diff:.2e} on {path} (> {parity_tolerance}).")
    return {
        "path": str(path),
        "opset": opset,
        "batch": batch,
        "simplified": simplified,
        "max_abs_diff": diff,
        "ops": sorted({n.op_type for n in proto.graph.node}),
        "unsupported_ops": unsupported_ops(path),
    }
