"""Throughput backends behind one interface; the same method everywhere: warm-up runs,
then timed runs of one batch each, median and p90 latency, images/s = batch / median
(``latency_ips``); ``throughput_ips`` = batch x runs / the summed wall time of the timed
runs (they run back to back), see ``deploy.schema``.

Every backend returns the same JSON-able dict (schema ``squish-plugin/bench-v1``).

Example:
    >>> from squish_plugin.deploy.backends import BACKENDS
    >>> sorted(BACKENDS)
    ['onnxruntime', 'pytorch', 'tensorrt', 'trtexec']
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidArgumentError, MissingExtraError
from ..threads import torch_threads
from .schema import SCHEMA, bench_result, throughput_ips

__all__ = ["BACKENDS", "SCHEMA", "MachineLoad", "latency_summary", "result"]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """Per-batch latency statistics in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    return {
        "median": statistics.median(ms),
        "p90": float(np.percentile(ms, 90)),
        "mean": statistics.fmean(ms),
        "min": ms[0],
        "max": ms[-1],
    }


def result(
    model: str,
    backend: str,
    precision: str,
    batch: int,
    size: int,
    seconds: list[float],
    warmup: int,
    env: dict[str, Any],
) -> dict[str, Any]:
    """A result in the shared schema from measured per-batch wall times (timed back to
    back, so their sum is the wall time of the timed runs)."""
    return bench_result(
        model,
        backend,
        precision,
        batch,
        size,
        latency_ms=latency_summary(seconds),
        runs=len(seconds),
        warmup=warmup,
        env=env,
        throughput_ips=throughput_ips(batch, len(seconds), sum(seconds)),
    )


def _time(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


#: ONNX Runtime's session option that stops its threads spinning once a run returns
SPIN_STOP = "session.force_spinning_stop"

#: other processes using this many cores on average during a measurement make it "busy"
BUSY_CORES = 0.5
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_ticks() -> list[int] | None:
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, IndexError, ValueError):
        return None


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (Linux ``/proc/stat``; stolen time, when
    a virtual machine's host ran something else, included), or None elsewhere."""
    ticks = _cpu_ticks()
    if ticks is None:
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / _CLOCK_TICKS


def _steal_seconds() -> float | None:
    """CPU seconds a virtual machine's host gave to others while it wanted to run."""
    ticks = _cpu_ticks()
    return ticks[7] / _CLOCK_TICKS if ticks is not None and len(ticks) > 7 else None


class MachineLoad:
    """Measures, around a benchmark, how much CPU *other* processes used: the machine's
    busy time (``/proc/stat``) less this process's own CPU time, per second of wall time.
    ``record()`` says how busy the machine was (``busy`` when others held at least
    :data:`BUSY_CORES` cores on average, or where ``/proc/stat`` is missing, when the
    1-minute load average before the run exceeded the cores) and, on a virtual machine,
    how many cores its host took away meanwhile (``stolen_cores``, part of the others)."""

    def __enter__(self) -> MachineLoad:
        self.load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self._wall, self._own, self._busy = time.perf_counter(), _own_cpu(), _busy_seconds()
        self._steal = _steal_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self._wall, 1e-9)
        busy = _busy_seconds()
        self.others = None
        if busy is not None and self._busy is not None:
            self.others = max(0.0, (busy - self._busy) - (_own_cpu() - self._own)) / wall
        steal = _steal_seconds()
        self.steal = None if steal is None or self._steal is None else max(0.0, steal - self._steal) / wall

    def record(self) -> dict[str, Any]:
        cores = os.cpu_count() or 1
        if self.others is not None:
            busy = self.others >= BUSY_CORES
        else:
            busy = self.load_before is not None and self.load_before > cores
        others = None if self.others is None else round(self.others, 3)
        load = None if self.load_before is None else round(self.load_before, 2)
        steal = None if self.steal is None else round(self.steal, 3)
        return {
            "cores": cores,
            "load_1min_before": load,
            "other_processes_cores": others,
            "stolen_cores": steal,
            "busy": busy,
        }


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytorch_runner(
    model: torch.nn.Module, *, batch: int = 32, size: int = 224, threads: int = 2, channels_last: bool = True
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """``(run one batch, environment)`` for eager PyTorch on the CPU, on ``threads`` threads (the
    caller's count is given back after each batch: wrap a timing loop in
    :func:`~squish_plugin.threads.torch_threads` so no switch falls inside it)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=fmt)

    def run() -> Any:
        with torch_threads(threads), torch.inference_mode():
            return model(x)

    env = {"device": cpu_name(), "threads": threads, "torch": torch.__version__, "channels_last": channels_last}
    return run, env


def bench_pytorch(
    model: torch.nn.Module,
    *,
    name: str,
    batch: int = 32,
    size: int = 224,
    threads: int = 2,
    channels_last: bool = True,
    warmup: int = 3,
    runs: int = 10,
    **_: Any,
) -> dict[str, Any]:
    """Eager PyTorch on the CPU (channels_last by default)."""
    run, env = pytorch_runner(model, batch=batch, size=size, threads=threads, channels_last=channels_last)
    with torch_threads(threads):
        seconds = _time(run, warmup, runs)
    return result(name, "pytorch", "fp32", batch, size, seconds, warmup, env)


def onnxruntime_runner(
    onnx_path: str | os.PathLike,
    *,
    batch: int = 32,
    size: int = 224,
    threads: int = 2,
    cuda: bool = False,
    spin_stop: bool = True,
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """``(run one batch, environment)`` for ONNX Runtime: the CPU execution provider, or
    CUDA where present and asked for; ``spin_stop=False`` leaves the threads spinning after a
    run (ONNX Runtime's default; see below)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError(
            "the onnxruntime backend needs onnxruntime: pip install 'squish-plugin[export]'."
        ) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Worker threads spin while a run lasts, as deployed, and stop when it returns: left
    # spinning (ONNX Runtime's default), an idle session's pool keeps cores busy long after
    # its run and slows the next model of an interleaved round (issue #28).
    opts.add_session_config_entry(SPIN_STOP, "1" if spin_stop else "0")
    providers = ["CPUExecutionProvider"]
    if cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InvalidArgumentError("ONNX Runtime here has no CUDAExecutionProvider; install onnxruntime-gpu.")
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
    feed = {
        session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    }
    env = {
        "device": "CUDA" if cuda else cpu_name(),
        "threads": threads,
        "onnxruntime": ort.__version__,
        "providers": session.get_providers(),
        "force_spinning_stop": spin_stop,
    }
    return (lambda: session.run(None, feed)), env


def bench_onnxruntime(
    onnx_path: str | os.PathLike,
    *,
    name: str,
    batch: int = 32,
    size: int = 224,
    threads: int = 2,
    warmup: int = 3,
    runs: int = 10,
    cuda: bool = False,
    **_: Any,
) -> dict[str, Any]:
    """ONNX Runtime: the CPU execution provider, or CUDA where present and asked for."""
    run, env = onnxruntime_runner(onnx_path, batch=batch, size=size, threads=threads, cuda=cuda)
    return result(name, "onnxruntime", "fp32", batch, size, _time(run, warmup, runs), warmup, env)


def bench_interleaved(
    targets: dict[str, Any],
    *,
    backend: str,
    batch: int = 32,
    size: int = 224,
    threads: int = 2,
    warmup: int = 3,
    runs: int = 10,
    rounds: int = 1,
    progress: Callable[[int, int], Any] | None = None,
) -> list[dict[str, Any]]:
    """PyTorch or ONNX Runtime throughput of several models measured in ``rounds``
    interleaved rounds (A B C, A B C, ...), each model timed ``runs`` batches per round
    after ``warmup`` untimed ones: a machine that slows down for a while slows every model
    alike, and each figure is the median over all ``rounds * runs`` batches.
    ``progress(done, total)`` hears of every model timed in a round. Each result also keeps
    ``round_medians_ms``, its median in each round: the fastest round is what a latency
    model calibrates on (a burst of another tenant's work slows some rounds, never speeds one)."""
    make = {"pytorch": pytorch_runner, "onnxruntime": onnxruntime_runner}[backend]
    runners = {name: make(target, batch=batch, size=size, threads=threads) for name, target in targets.items()}
    seconds: dict[str, list[float]] = {name: [] for name in targets}
    per_round: dict[str, list[float]] = {name: [] for name in targets}
    with torch_threads(threads if backend == "pytorch" else None):
        for run, _ in runners.values():
            _time(run, warmup, 0)
        total, done = rounds * len(runners), 0
        for _ in range(rounds):
            for name, (run, _) in runners.items():
                times = _time(run, 0, runs)
                seconds[name] += times
                per_round[name].append(statistics.median(times) * 1e3)
                done += 1
                if progress is not None:
                    progress(done, total)
    out = []
    for name, (_, env) in runners.items():
        res = result(name, backend, "fp32", batch, size, seconds[name], warmup, {**env, "rounds": rounds})
        out.append({**res, "round_medians_ms": per_round[name]})
    return out


def _tensorrt(onnx_path, *, name, batch=32, size=224, precision="fp32", warmup=10, runs=50, **_):
    from .tensorrt_backend import bench_tensorrt

    return bench_tensorrt(onnx_path, model=name, precision=precision, batch=batch, size=size, warmup=warmup, runs=runs)


def _trtexec(onnx_path, *, name, batch=32, size=224, precision="fp32", trtexec=None, **_):
    from .trtexec import run_trtexec

    kw = {"trtexec": trtexec} if trtexec else {}
    return run_trtexec(onnx_path, model=name, batch=batch, size=size, precision=precision, **kw)


#: backend name -> (needs "model" (a torch module) or "onnx" (a file path), function)
BACKENDS: dict[str, tuple[str, Callable[..., dict[str, Any]]]] = {
    "pytorch": ("model", bench_pytorch),
    "onnxruntime": ("onnx", bench_onnxruntime),
    "tensorrt": ("onnx", _tensorrt),
    "trtexec": ("onnx", _trtexec),
}
