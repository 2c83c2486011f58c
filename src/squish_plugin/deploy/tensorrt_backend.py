"""TensorRT throughput through its Python API, on a GPU host with CUDA-enabled PyTorch.

Buffers are torch CUDA tensors; copies, inference and ``torch.cuda.Event`` timing all
run on a dedicated ``torch.cuda.Stream``, as in the Jetson kit (TensorRT warns that
enqueueing on the default stream costs extra synchronisations). The engine is built by
the same code the kit runs (``deploy/_kit/bench_trt.py``), which handles TensorRT 8.2 (explicit-batch flag,
``max_workspace_size``, bindings + ``execute_async_v2``) and 10.x (no flag,
memory pools, tensor addresses + ``execute_async_v3``). On the Jetson TX1 itself
use the kit instead: PyTorch wheels no longer support its sm_53 GPU, so the kit
reaches CUDA through ctypes.

Latency per batch spans H2D copy + inference + D2H copy, the span trtexec calls
"Latency"; images/s = batch / median latency (``latency_ips``), and ``throughput_ips``
= batch x runs / the wall time of the timed runs (see ``deploy.schema``).

Example (needs TensorRT and a CUDA GPU):
    >>> from squish_plugin.deploy.tensorrt_backend import bench_tensorrt  # doctest: +SKIP
    >>> bench_tensorrt("ancestor.onnx", model="ancestor", precision="fp16")["images_per_second"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, MissingExtraError
from .schema import bench_result, throughput_ips

__all__ = ["bench_tensorrt"]


def _kit():
    from ._kit import bench_trt

    return bench_trt


def _check(precision: str, batch: int, size: int, warmup: int, runs: int, workspace_mb: int) -> None:
    if precision not in ("fp32", "fp16"):
        raise InvalidArgumentError(f"precision must be 'fp32' or 'fp16', got {precision!r}.")
    for name, value, low in (
        ("batch", batch, 1),
        ("size", size, 1),
        ("warmup", warmup, 0),
        ("runs", runs, 1),
        ("workspace_mb", workspace_mb, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}.")


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingExtraError(
            "the tensorrt backend needs TensorRT's Python module (NVIDIA's wheel: pip install tensorrt, or JetPack's "
            "python3-libnvinfer on a Jetson)."
        ) from None
    return trt


def _time_batches(execute, tensors, buffers, host, warmup: int, runs: int) -> tuple[list[float], float]:
    """Per-batch seconds of the ``runs`` timed batches (CUDA events) and their wall time, with
    copies, inference and events on a dedicated stream, never the default one."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the buffers were made on the current stream
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    seconds, began = [], 0.0
    with torch.cuda.stream(stream):
        for i in range(warmup + runs):
            if i == warmup:
                began = time.perf_counter()  # the wall time of the timed runs, host syncs included
            start.record(stream)
            for (_, is_input, _), dev, cpu in zip(tensors, buffers, host):
                if is_input:
                    dev.copy_(cpu, non_blocking=True)
            if not execute(stream.cuda_stream):
                raise InvalidArgumentError("TensorRT failed to enqueue an inference; see its log above.")
            for (_, is_input, _), dev, cpu in zip(tensors, buffers, host):
                if not is_input:
                    cpu.copy_(dev, non_blocking=True)
            end.record(stream)
            end.synchronize()
            if i >= warmup:
                seconds.append(start.elapsed_time(end) / 1e3)
    return seconds, time.perf_counter() - began


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    p90 = _kit().percentile(ms, 90)
    return {"median": statistics.median(ms), "p90": p90, "mean": statistics.fmean(ms), "min": ms[0], "max": ms[-1]}


def bench_tensorrt(
    onnx_path: str | os.PathLike,
    *,
    model: str,
    precision: str = "fp32",
    batch: int = 32,
    size: int = 224,
    warmup: int = 10,
    runs: int = 50,
    workspace_mb: int = 1024,
) -> dict[str, Any]:
    """Build a TensorRT engine for ``onnx_path`` and time ``runs`` batches after ``warmup``.

    Returns a ``squish-plugin/bench-v1`` result with backend ``"tensorrt"``. Raises
    :class:`MissingExtraError` without TensorRT or a CUDA GPU, and
    :class:`InvalidArgumentError` when the ONNX does not parse or build.
    """
    _check(precision, batch, size, warmup, runs, workspace_mb)
    trt = _import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise MissingExtraError("the tensorrt backend needs a CUDA GPU and a CUDA-enabled PyTorch build.")
    if not Path(onnx_path).is_file():
        raise InvalidArgumentError(f"ONNX file {os.fspath(onnx_path)!r} does not exist.")
    kit = _kit()
    try:
        engine, input_name, shape = kit.build_engine(trt, os.fspath(onnx_path), precision, batch, size, workspace_mb)
        context = engine.create_execution_context()
        tensors = kit.io_tensors(trt, engine, context, input_name, shape)
    except kit.KitError as exc:
        raise InvalidArgumentError(str(exc)) from None
    gen = torch.Generator().manual_seed(0)
    host = [torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen).pin_memory() for _, _, nbytes in tensors]
    # Random bytes are not sane floats; the input gets standard-normal float32 values instead.
    for (_, is_input, nbytes), buf in zip(tensors, host):
        if is_input and nbytes == 4 * batch * 3 * size * size:
            buf.view(torch.float32).copy_(torch.randn(batch * 3 * size * size, generator=gen))
    buffers = [torch.empty(nbytes, dtype=torch.uint8, device="cuda") for _, _, nbytes in tensors]
    execute = kit.make_execute(context, tensors, [b.data_ptr() for b in buffers])
    seconds, wall = _time_batches(execute, tensors, buffers, host, warmup, runs)
    lat = _summary(seconds)
    env = {
        "device": torch.cuda.get_device_name(),
        "tensorrt": trt.__version__,
        "torch": torch.__version__,
        "timing": "torch.cuda events: H2D + inference + D2H",
        "workspace_mb": workspace_mb,
    }
    return bench_result(
        model,
        "tensorrt",
        precision,
        batch,
        size,
        latency_ms=lat,
        runs=runs,
        warmup=warmup,
        env=env,
        throughput_ips=throughput_ips(batch, runs, wall),
    )
