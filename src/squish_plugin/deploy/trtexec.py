"""Benchmark an ONNX file with NVIDIA's ``trtexec`` and read its performance summary.

trtexec prints, at the end of a run, a block like (TensorRT 8.2 on a Jetson)::

    [07/14/2023-11:55:18] [I] === Performance summary ===
    [07/14/2023-11:55:18] [I] Throughput: 11.0613 qps
    [07/14/2023-11:55:18] [I] Latency: min = 89.312 ms, max = 91.492 ms, mean = 90.3919 ms,
        median = 90.3035 ms, percentile(99%) = 91.492 ms      (one line in the log)

``Throughput`` counts inferences per second of host wall time; one inference is one
whole batch (explicit batch: the input's first dimension). ``Latency`` is the *host*
latency of one inference (H2D + GPU compute + D2H), i.e. per batch. A result carries
both figures of ``deploy.schema``: ``throughput_ips`` = qps x batch and ``latency_ips``
= batch / median latency, which is ``images_per_second`` as for every backend. The
batch is never taken on trust: the log's input binding line (``Created input binding
for input with dimensions 32x3x224x224``; 10.x: ``Input binding for input with ...``)
must show it. TensorRT 8.2 prints one percentile (``--percentile``, default 99), 8.4+
90/95/99; we pass ``--percentile=90`` so ``p90`` is filled on every version. The
summary formats of TensorRT 7.x and older are refused by name.

Example:
    >>> from squish_plugin.deploy.trtexec import trtexec_command
    >>> trtexec_command("ancestor.onnx", fp16=True)[1:4]
    ['--onnx=ancestor.onnx', '--shapes=input:32x3x224x224', '--fp16']
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, MissingExtraError
from ..persistence import atomic_write_text
from ._kit import trtexec_log as log
from .schema import bench_result

__all__ = [
    "DEFAULT_TRTEXEC",
    "parse_trtexec_output",
    "parse_trtexec_summary",
    "resolve_trtexec",
    "run_trtexec",
    "trtexec_command",
]

DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # JetPack and NVIDIA's containers put it here
PERCENTILE = 90
# trtexec refuses --shapes for an ONNX whose input shape is fixed (the kit's script then runs it again without).
STATIC_SHAPE_ERROR = "Static model does not take explicit shapes"


def trtexec_command(
    onnx_path: str | os.PathLike,
    *,
    trtexec: str = DEFAULT_TRTEXEC,
    input_name: str = "input",
    batch: int = 32,
    size: int = 224,
    fp16: bool = False,
    warmup_ms: int = 2000,
    duration_s: int = 10,
    iterations: int | None = None,
    avg_runs: int = 10,
    extra: Sequence[str] = (),
    shapes: bool = True,
    workspace_mb: int | None = None,
) -> list[str]:
    """The trtexec argument list (no shell) that benchmarks ``onnx_path`` at ``batch`` x 3 x ``size`` x ``size``.

    Flag spellings are those of trtexec 8.2 and 10.x alike. ``--explicitBatch`` is
    never passed (8.2 ignores it for ONNX, 10.x removed it). ``shapes=False`` drops
    ``--shapes`` for an ONNX with a fixed input shape, which trtexec rejects it for.
    ``workspace_mb`` adds ``--workspace=N`` (TensorRT <= 8.x, whose trtexec default is
    only 16 MiB; 10.x removed the flag: pass ``extra=("--memPoolSize=workspace:1024M",)``).
    """
    _positive_int("batch", batch)
    _positive_int("size", size)
    _positive_int("warmup_ms", warmup_ms, zero=True)
    _positive_int("duration_s", duration_s, zero=True)
    _positive_int("avg_runs", avg_runs)
    if iterations is not None:
        _positive_int("iterations", iterations)
    if workspace_mb is not None:
        _positive_int("workspace_mb", workspace_mb)
    if isinstance(extra, str):
        raise InvalidArgumentError("extra must be a sequence of flags such as ('--useSpinWait',), not one string.")
    cmd = [str(trtexec), f"--onnx={os.fspath(onnx_path)}"]
    if shapes:
        cmd.append(f"--shapes={input_name}:{batch}x3x{size}x{size}")
    if fp16:
        cmd.append("--fp16")
    if workspace_mb is not None:
        cmd.append(f"--workspace={workspace_mb}")
    cmd += [f"--warmUp={warmup_ms}", f"--duration={duration_s}"]
    if iterations is not None:
        cmd.append(f"--iterations={iterations}")
    cmd += [f"--avgRuns={avg_runs}", f"--percentile={PERCENTILE}", *map(str, extra)]
    return cmd


def _positive_int(name: str, value: Any, *, zero: bool = False) -> None:
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}.")


def parse_trtexec_summary(text: str) -> dict[str, Any]:
    """Read trtexec's performance summary alone: throughput, per-batch latency and what ran where.

    Returns ``{"qps", "latency_ms", "latency_percentiles_ms", "gpu_compute_ms", "runs",
    "warmup_runs", "device", "tensorrt"}``; ``latency_ms`` has the schema's keys (``p90``
    is None when the log printed no 90th percentile). No images/s: those need the batch
    the log confirms (:func:`parse_trtexec_output`). Raises :class:`InvalidArgumentError`
    when the summary is missing (quoting trtexec's ``[E]`` lines, or naming a TensorRT
    7.x-or-older log as such).
    """
    return _read(log.parse_trtexec_summary, text)


def parse_trtexec_output(text: str, *, batch: int, input_name: str | None = None) -> dict[str, Any]:
    """:func:`parse_trtexec_summary` plus the input shape the log confirms and both images/s figures.

    Adds ``{"input_shape", "throughput_ips", "latency_ips", "images_per_second",
    "images_per_second_is"}``: ``throughput_ips`` = qps x ``batch``, ``latency_ips`` =
    ``batch`` / median latency, and ``images_per_second`` is ``latency_ips`` (see
    ``deploy.schema``). The log's input binding line for ``input_name`` (``None``: the
    first input it names) must show ``batch`` as the first dimension: a log that does not
    show it, or shows another batch, raises :class:`InvalidArgumentError` -- trtexec's qps
    is never multiplied by a batch the log does not confirm.
    """
    _positive_int("batch", batch)
    return _read(log.parse_trtexec_output, text, batch, input_name)


def _read(parse: Any, *args: Any) -> dict[str, Any]:
    """The shared parser (``_kit/trtexec_log.py``, the kit's own) with the package's error type."""
    try:
        return parse(*args)
    except log.KitError as exc:
        raise InvalidArgumentError(str(exc)) from None


def resolve_trtexec(trtexec: str | os.PathLike | None = None) -> str:
    """The trtexec to run: ``trtexec`` if given, else ``$TRTEXEC``, else
    ``/usr/src/tensorrt/bin/trtexec``, else ``trtexec`` on ``PATH``."""
    if trtexec is not None or os.environ.get("TRTEXEC"):
        chosen = os.fspath(trtexec) if trtexec is not None else os.environ["TRTEXEC"]
        found = shutil.which(chosen) if os.sep not in chosen else (chosen if os.access(chosen, os.X_OK) else None)
        if found is None:
            origin = "trtexec" if trtexec is not None else "$TRTEXEC"
            raise MissingExtraError(f"{origin} names {chosen!r}, which is not an executable file.")
        return found
    if os.access(DEFAULT_TRTEXEC, os.X_OK):
        return DEFAULT_TRTEXEC
    if found := shutil.which("trtexec"):
        return found
    raise MissingExtraError(
        f"trtexec was not found ($TRTEXEC, {DEFAULT_TRTEXEC}, PATH); it ships with TensorRT "
        "(JetPack, NVIDIA's containers or the TensorRT tarball), or pass trtexec=<path>."
    )


def _run(cmd: list[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidArgumentError(
            f"trtexec ran past timeout_s={timeout_s} seconds; raise it (engine builds are slow on a Jetson)."
        ) from None
    except OSError as exc:
        raise MissingExtraError(f"trtexec at {cmd[0]!r} could not be started ({exc.strerror or exc}).") from None
    return done.stdout


def run_trtexec(
    onnx_path: str | os.PathLike,
    *,
    model: str,
    trtexec: str | os.PathLike | None = None,
    batch: int = 32,
    size: int = 224,
    precision: str = "fp32",
    timeout_s: float = 1800,
    log_path: str | os.PathLike | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Run trtexec on ``onnx_path`` and return a ``squish-plugin/bench-v1`` result.

    ``kw`` goes to :func:`trtexec_command` (``warmup_ms``, ``duration_s``, ``iterations``,
    ``avg_runs``, ``extra``, ``workspace_mb``). The input's name and shape are read from the
    ONNX file (``export.onnx_input``): ``--shapes`` names that input, and an ONNX whose
    shape is fixed runs without ``--shapes`` (trtexec refuses it there) and must be
    fixed at ``batch`` x 3 x ``size`` x ``size``. The log must confirm ``batch`` on that
    input (:func:`parse_trtexec_output`). The raw log is written to ``log_path`` when given.
    """
    if precision not in ("fp32", "fp16"):
        raise InvalidArgumentError(f"precision must be 'fp32' or 'fp16', got {precision!r}.")
    if not Path(onnx_path).is_file():
        raise InvalidArgumentError(f"ONNX file {os.fspath(onnx_path)!r} does not exist.")
    _positive_int("batch", batch)
    _positive_int("size", size)
    from .export import onnx_input

    name, dims = onnx_input(onnx_path)
    if kw.get("input_name", name) != name:
        raise InvalidArgumentError(
            f"input_name={kw['input_name']!r} is not the input of {model!r}; its input is {name!r}."
        )
    static = _check_fixed_dims(onnx_path, model, dims, batch, size)
    exe = resolve_trtexec(trtexec)
    common = {"trtexec": exe, "batch": batch, "size": size, "fp16": precision == "fp16", **kw, "input_name": name}
    cmd = trtexec_command(onnx_path, shapes=not static, **common)
    text = _run(cmd, timeout_s)
    if log_path is not None:
        atomic_write_text(log_path, text)
    try:
        parsed = parse_trtexec_output(text, batch=batch, input_name=name)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"trtexec on model {model!r} ({os.fspath(onnx_path)}): {exc}") from None
    return to_result(
        parsed, model=model, precision=precision, batch=batch, size=size, env={"trtexec": exe, "command": cmd}
    )


def _check_fixed_dims(onnx_path, model: str, dims: list[int | None], batch: int, size: int) -> bool:
    """Whether the ONNX input shape is fixed (static); refuses fixed dimensions other than asked."""
    wanted = [batch, 3, size, size]
    bad = len(dims) != len(wanted) or any(d is not None and d != w for d, w in zip(dims, wanted))
    if dims and bad:
        shown = "x".join("?" if d is None else str(d) for d in dims)
        raise InvalidArgumentError(
            f"model {model!r} ({os.fspath(onnx_path)}) has the input shape {shown}, which does not fit "
            f"{batch}x3x{size}x{size}; export it for batch={batch} and size={size} (or with a dynamic batch)."
        )
    return bool(dims) and all(d is not None for d in dims)


def to_result(
    parsed: dict[str, Any], *, model: str, precision: str, batch: int, size: int, env: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``squish-plugin/bench-v1`` result (backend ``trtexec``) from :func:`parse_trtexec_output`."""
    trtexec = {
        "qps": parsed["qps"],
        "latency_percentiles_ms": parsed["latency_percentiles_ms"],
        "gpu_compute_ms": parsed["gpu_compute_ms"],
        "input_shape": parsed["input_shape"],
    }
    return bench_result(
        model,
        "trtexec",
        precision,
        batch,
        size,
        latency_ms=parsed["latency_ms"],
        runs=parsed["runs"],
        warmup=parsed["warmup_runs"],
        env={"device": parsed["device"], "tensorrt": parsed["tensorrt"], **(env or {})},
        throughput_ips=parsed["throughput_ips"],
        trtexec=trtexec,
    )
