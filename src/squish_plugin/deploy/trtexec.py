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
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, MissingExtraError
from ..persistence import atomic_write_text
from .schema import IMAGES_PER_SECOND_IS, LATENCY_KEYS, bench_result, latency_ips

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

# Lines start with optional "[date-time] [I] " tags; anchoring after them keeps
# "H2D Latency:" and "End-to-End Host Latency:" from matching "Latency:".
_TAGS = r"^[ \t]*(?:\[[^\]\n]*\][ \t]*)*"
_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_SUMMARY = re.compile(_TAGS + r"=== Performance summary ===", re.M)
_THROUGHPUT = re.compile(_TAGS + r"Throughput:[ \t]*" + _NUM + r"[ \t]*qps", re.M)
_STAT_LINE = {
    "latency": re.compile(_TAGS + r"Latency:(.*)$", re.M),
    "gpu_compute": re.compile(_TAGS + r"GPU Compute Time:(.*)$", re.M),
}
_STAT = re.compile(
    r"(min|max|mean|median|percentile\(\s*" + _NUM + r"\s*%\s*\)|percentile:\s*" + _NUM + r"\s*%)"
    r"\s*=\s*" + _NUM + r"\s*ms"
)
_DEVICE = re.compile(_TAGS + r"Selected Device:[ \t]*(\S[^\n]*?)[ \t]*$", re.M)
_VERSION_LINE = re.compile(_TAGS + r"TensorRT version:[ \t]*([\d.]+)", re.M)
_VERSION_TAG = re.compile(r"\[TensorRT v(\d+)\]")
_BINDING = re.compile(r"[Ii]nput binding for (\S+) with dimensions (\d+(?:x\d+)*)")
_TIMED = re.compile(r"Timing trace has (\d+) queries")
_WARMUP = re.compile(r"Warmup completed (\d+) queries")
_ERROR = re.compile(r"\[E\][ \t]*(.*\S)")
# Summaries of trtexec versions older than 8.2's format, named in the error rather than
# reported as a missing summary: TensorRT 7.x prints a "Host Latency" line and then
# "min: 63.1 ms (end to end ...)", "max: ...", "mean: ...", "median: ..." lines; 6 and
# older print "Average over 10 runs is 0.66 ms (host walltime is ...)" lines.
_OLD_FORMATS = (
    (
        re.compile(_TAGS + r"Host Latency[ \t]*\r?\n" + _TAGS + r"min:[ \t]*" + _NUM + r"[ \t]*ms", re.M),
        "TensorRT 7.x",
        "its summary is a 'Host Latency' block of 'min:', 'max:', 'mean:' and 'median:' lines",
    ),
    (
        re.compile(_TAGS + r"Average over \d+ runs is[ \t]*" + _NUM + r"[ \t]*ms", re.M),
        "TensorRT 6 or older",
        "its timings are 'Average over N runs is ... ms' lines",
    ),
)


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


def _stats(line: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, pct_a, pct_b, value in _STAT.findall(line):
        pct = pct_a or pct_b
        out[f"p{float(pct):g}" if pct else key] = float(value)
    return out


def _tensorrt_version(text: str) -> str | None:
    if m := _VERSION_LINE.search(text):
        return m.group(1)
    if m := _VERSION_TAG.search(text):  # the RUNNING/PASSED tag: v8201 -> 8.2.1, v100300 -> 10.3.0
        d = m.group(1)
        parts = (d[:2], d[2:4], d[4:]) if len(d) == 6 else (d[:1], d[1:2], d[2:]) if len(d) == 4 else (d,)
        return ".".join(str(int(p)) for p in parts)
    return None


def _failure(text: str, missing: str) -> InvalidArgumentError:
    errors = _ERROR.findall(text)
    if not errors:
        return InvalidArgumentError(f"the trtexec log has no {missing} and no [E] error line; was the run cut short?")
    first, last = errors[0], errors[-1]
    said = f"its last error was {last!r}" if first == last else f"its errors run from {first!r} to {last!r}"
    return InvalidArgumentError(f"the trtexec log has no {missing}; {said}.")


def _no_summary(text: str) -> InvalidArgumentError:
    for pattern, version, looks in _OLD_FORMATS:
        if pattern.search(text):
            return InvalidArgumentError(
                f"the trtexec log comes from an unsupported trtexec version, {version} ({looks}, with no "
                "'=== Performance summary ==='); squish-plugin and its kit read trtexec from TensorRT 8.2 on."
            )
    return _failure(text, "'=== Performance summary ===' section")


def parse_trtexec_summary(text: str) -> dict[str, Any]:
    """Read trtexec's performance summary alone: throughput, per-batch latency and what ran where.

    Returns ``{"qps", "latency_ms", "latency_percentiles_ms", "gpu_compute_ms", "runs",
    "warmup_runs", "device", "tensorrt"}``; ``latency_ms`` has the schema's keys (``p90``
    is None when the log printed no 90th percentile). No images/s: those need the batch
    the log confirms (:func:`parse_trtexec_output`). Raises :class:`InvalidArgumentError`
    when the summary is missing (quoting trtexec's ``[E]`` lines, or naming a TensorRT
    7.x-or-older log as such).
    """
    start = _SUMMARY.search(text)
    if start is None:
        raise _no_summary(text)
    summary = text[start.end() :]
    throughput = _THROUGHPUT.search(summary)
    latency_line = _STAT_LINE["latency"].search(summary)
    if throughput is None:
        raise _failure(text, "'Throughput: ... qps' line in its performance summary")
    if latency_line is None:
        raise _failure(text, "'Latency: ...' line in its performance summary")
    latency = _stats(latency_line.group(1))
    lacking = [k for k in ("min", "max", "mean", "median") if k not in latency]
    if lacking:
        line = latency_line.group(0).strip()
        raise InvalidArgumentError(f"the trtexec 'Latency:' line has no {lacking[0]} value: {line!r}.")
    gpu_line = _STAT_LINE["gpu_compute"].search(summary)
    timed, warm = _TIMED.search(text), _WARMUP.search(text)
    device = _DEVICE.search(text)
    return {
        "qps": float(throughput.group(1)),
        "latency_ms": {k: latency.get(k) if k == "p90" else latency[k] for k in LATENCY_KEYS},
        "latency_percentiles_ms": {k: v for k, v in latency.items() if k.startswith("p")},
        "gpu_compute_ms": _stats(gpu_line.group(1)) if gpu_line else None,
        "runs": int(timed.group(1)) if timed else None,
        "warmup_runs": int(warm.group(1)) if warm else None,
        "device": device.group(1) if device else None,
        "tensorrt": _tensorrt_version(text),
    }


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
    parsed = parse_trtexec_summary(text)
    shape = _confirmed_shape(text, input_name, batch)
    ips = latency_ips(batch, parsed["latency_ms"]["median"])
    return {
        **parsed,
        "input_shape": shape,
        "throughput_ips": parsed["qps"] * batch,
        "latency_ips": ips,
        "images_per_second": ips,
        "images_per_second_is": IMAGES_PER_SECOND_IS,
    }


def _confirmed_shape(text: str, input_name: str | None, batch: int) -> list[int]:
    bindings = _BINDING.findall(text)
    name = input_name if input_name is not None else (bindings[0][0] if bindings else None)
    shapes = [[int(d) for d in dims.split("x") if d] for seen, dims in bindings if seen == name]
    if not shapes:
        named = sorted({seen for seen, _ in bindings})
        others = f" (it has one for {', '.join(map(repr, named))} only)" if named else ""
        which = f"input {input_name!r}" if input_name is not None else "any input"
        raise InvalidArgumentError(
            f"the trtexec log has no input binding line for {which}{others}, so batch={batch} cannot be "
            "confirmed; give the whole log trtexec printed, whose binding lines show each input's dimensions."
        )
    for shape in shapes:
        if shape[0] != batch:
            raise InvalidArgumentError(
                f"the trtexec log shows input {name!r} as {'x'.join(map(str, shape))}, i.e. batch {shape[0]}, but "
                f"batch={batch} was asked; export the ONNX with that batch (or a dynamic one)."
            )
    return shapes[0]


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
