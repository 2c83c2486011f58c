"""trtexec's performance summary read from its log, and the bench-v1 schema's constants: the
one copy the package (``squish_plugin.deploy.trtexec``, ``deploy.schema``) and the Jetson kit's
``bench_trt.py`` both use. The kit copies this file beside its script, so it is written for the
device's Python 3.6 with nothing but the standard library, and imports nothing of the package.
"""

import re

SCHEMA = "squish-plugin/bench-v1"
#: what ``latency_ms`` holds, milliseconds per batch
LATENCY_KEYS = ("median", "p90", "mean", "min", "max")
#: what ``images_per_second`` is in every result of this version: batch / median latency
IMAGES_PER_SECOND_IS = "latency_ips"

# Lines start with optional "[date-time] [I] " tags; anchoring after them keeps
# "H2D Latency:" and "End-to-End Host Latency:" from matching "Latency:".
_TAGS = r"^[ \t]*(?:\[[^\]\n]*\][ \t]*)*"
_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_SUMMARY = re.compile(_TAGS + r"=== Performance summary ===", re.M)
_THROUGHPUT = re.compile(_TAGS + r"Throughput:[ \t]*" + _NUM + r"[ \t]*qps", re.M)
_LATENCY = re.compile(_TAGS + r"Latency:(.*)$", re.M)
_GPU = re.compile(_TAGS + r"GPU Compute Time:(.*)$", re.M)
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
_OLD_FORMATS = (  # trtexec summaries older than TensorRT 8.2's, named in the error
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


class KitError(Exception):
    """A one-sentence reason a model could not be benchmarked or a log read."""


def _stats(line):
    out = {}
    for key, pct_a, pct_b, value in _STAT.findall(line):
        pct = pct_a or pct_b
        out["p%g" % float(pct) if pct else key] = float(value)
    return out


def _version(text):
    m = _VERSION_LINE.search(text)
    if m:
        return m.group(1)
    m = _VERSION_TAG.search(text)
    if m:
        d = m.group(1)
        parts = (d[:2], d[2:4], d[4:]) if len(d) == 6 else (d[:1], d[1:2], d[2:]) if len(d) == 4 else (d,)
        return ".".join(str(int(p)) for p in parts)
    return None


def _failure(text, missing):
    errors = _ERROR.findall(text)
    if not errors:
        return KitError("the trtexec log has no %s and no [E] error line; was the run cut short?" % missing)
    if errors[0] == errors[-1]:
        return KitError("the trtexec log has no %s; its last error was %r." % (missing, errors[-1]))
    return KitError("the trtexec log has no %s; its errors run from %r to %r." % (missing, errors[0], errors[-1]))


def _no_summary(text):
    for pattern, version, looks in _OLD_FORMATS:
        if pattern.search(text):
            return KitError(
                "the trtexec log comes from an unsupported trtexec version, %s (%s, with no "
                "'=== Performance summary ==='); squish-plugin and its kit read trtexec from TensorRT 8.2 on."
                % (version, looks)
            )
    return _failure(text, "'=== Performance summary ===' section")


def parse_trtexec_summary(text):
    """trtexec's summary alone: ``{"qps", "latency_ms", "latency_percentiles_ms",
    "gpu_compute_ms", "runs", "warmup_runs", "device", "tensorrt"}`` (``latency_ms`` with the
    schema's keys, ``p90`` None when the log printed no 90th percentile); :class:`KitError`
    when the summary is missing, quoting trtexec's ``[E]`` lines or naming a TensorRT 7.x-or-older
    log as such."""
    start = _SUMMARY.search(text)
    if start is None:
        raise _no_summary(text)
    summary = text[start.end() :]
    throughput = _THROUGHPUT.search(summary)
    latency_line = _LATENCY.search(summary)
    if throughput is None:
        raise _failure(text, "'Throughput: ... qps' line in its performance summary")
    if latency_line is None:
        raise _failure(text, "'Latency: ...' line in its performance summary")
    latency = _stats(latency_line.group(1))
    for key in ("min", "max", "mean", "median"):
        if key not in latency:
            raise KitError("the trtexec 'Latency:' line has no %s value: %r." % (key, latency_line.group(0).strip()))
    gpu_line = _GPU.search(summary)
    timed, warm, device = _TIMED.search(text), _WARMUP.search(text), _DEVICE.search(text)
    return {
        "qps": float(throughput.group(1)),
        "latency_ms": dict((k, latency.get(k) if k == "p90" else latency[k]) for k in LATENCY_KEYS),
        "latency_percentiles_ms": dict((k, v) for k, v in latency.items() if k.startswith("p")),
        "gpu_compute_ms": _stats(gpu_line.group(1)) if gpu_line else None,
        "runs": int(timed.group(1)) if timed else None,
        "warmup_runs": int(warm.group(1)) if warm else None,
        "device": device.group(1) if device else None,
        "tensorrt": _version(text),
    }


def parse_trtexec_output(text, batch, input_name=None):
    """The summary, the input shape the log confirms (its first dimension must be ``batch``:
    trtexec's qps is never multiplied by a batch the log does not confirm) and both images/s
    figures: ``throughput_ips`` = qps x batch, ``latency_ips`` = batch / median latency, which
    ``images_per_second`` is."""
    parsed = parse_trtexec_summary(text)
    shape = _confirmed_shape(text, input_name, batch)
    ips = latency_ips(batch, parsed["latency_ms"]["median"])
    parsed.update(
        input_shape=shape,
        throughput_ips=parsed["qps"] * batch,
        latency_ips=ips,
        images_per_second=ips,
        images_per_second_is=IMAGES_PER_SECOND_IS,
    )
    return parsed


def _confirmed_shape(text, input_name, batch):
    bindings = _BINDING.findall(text)
    name = input_name if input_name is not None else (bindings[0][0] if bindings else None)
    shapes = [[int(d) for d in dims.split("x") if d] for seen, dims in bindings if seen == name]
    if not shapes:
        named = sorted(set(seen for seen, _ in bindings))
        others = " (it has one for %s only)" % ", ".join(map(repr, named)) if named else ""
        which = "input %r" % input_name if input_name is not None else "any input"
        raise KitError(
            "the trtexec log has no input binding line for %s%s, so batch=%d cannot be confirmed; give the whole "
            "log trtexec printed, whose binding lines show each input's dimensions." % (which, others, batch)
        )
    for shape in shapes:
        if shape[0] != batch:
            raise KitError(
                "the trtexec log shows input %r as %s, i.e. batch %d, but batch=%d was asked; export the ONNX with "
                "that batch (or a dynamic one)." % (name, "x".join(map(str, shape)), shape[0], batch)
            )
    return shapes[0]


def latency_ips(batch, median_ms):
    """Images per second from the median per-batch latency: ``batch / median``."""
    return batch / (median_ms / 1e3)
