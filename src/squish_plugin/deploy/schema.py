"""The one result format every throughput backend writes: ``squish-plugin/bench-v1``.

Two images/s figures are in every result, under explicit names:

- ``latency_ips`` = batch / median per-batch latency. Every backend can compute it
  (its latency samples are per batch), so ``images_per_second`` -- the report's
  Images/s column -- is this one for pytorch, onnxruntime, tensorrt and trtexec alike,
  and ``images_per_second_is`` says so.
- ``throughput_ips`` = images over wall time: for trtexec its ``Throughput`` (queries per
  second of host wall time) x the batch the log confirms; for our own timing loops
  batch x timed runs / the wall time those runs took. It is higher than ``latency_ips``
  where consecutive batches overlap (copies of one batch during the compute of another)
  and lower where the host adds gaps between them.

Example:
    >>> from squish_plugin.deploy.schema import SCHEMA, bench_result
    >>> r = bench_result("ancestor", "pytorch", "fp32", 32, 224, latency_ms={"median": 64.0},
    ...                  runs=10, warmup=3, env={"device": "cpu"}, throughput_ips=480.0)
    >>> r["schema"] == SCHEMA, r["images_per_second"], r["images_per_second_is"], r["throughput_ips"]
    (True, 500.0, 'latency_ips', 480.0)
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

# the schema's tag, latency keys, images/s definition and latency_ips live in the kit's stdlib-only
# module (``_kit/trtexec_log.py``), which the device script imports too: one copy, no agreement to keep
from ._kit.trtexec_log import IMAGES_PER_SECOND_IS, LATENCY_KEYS, SCHEMA, latency_ips

__all__ = [
    "IMAGES_PER_SECOND_IS",
    "IPS_DEFINITIONS",
    "IPS_KEYS",
    "LATENCY_KEYS",
    "RESULT_KEYS",
    "SCHEMA",
    "bench_result",
    "images_per_second_is",
    "latency_ips",
    "throughput_ips",
]

#: the keys every result has (results written by earlier kits have only these)
RESULT_KEYS = (
    "model",
    "backend",
    "precision",
    "batch",
    "input_size",
    "images_per_second",
    "latency_ms",
    "runs",
    "warmup_runs",
    "env",
)
#: the two images/s figures, by name, in words (the report's label quotes them)
IPS_DEFINITIONS = {
    "latency_ips": "batch / median latency per batch",
    "throughput_ips": "images / wall time of the timed runs",
}
#: the keys results carry since the two definitions were split
IPS_KEYS = ("latency_ips", "throughput_ips", "images_per_second_is")


def throughput_ips(batch: int, runs: int, wall_s: float) -> float:
    """Images per second over wall time: ``batch * runs / wall_s``."""
    return batch * runs / wall_s


def images_per_second_is(result: Mapping[str, Any]) -> str:
    """Which definition ``result["images_per_second"]`` follows: its ``images_per_second_is``,
    or, for a result written before that key existed, what its backend used then (trtexec:
    qps x batch, i.e. ``throughput_ips``; every other backend: ``latency_ips``)."""
    if "images_per_second_is" in result:
        return result["images_per_second_is"]
    return "throughput_ips" if result.get("backend") == "trtexec" else "latency_ips"


def bench_result(
    model: str,
    backend: str,
    precision: str,
    batch: int,
    size: int,
    *,
    latency_ms: dict[str, Any],
    runs: int,
    warmup: int,
    env: dict[str, Any],
    throughput_ips: float,
    **extra: Any,
) -> dict[str, Any]:
    """A result in the shared schema; ``images_per_second`` and ``latency_ips`` are
    batch / ``latency_ms["median"]``. ``env`` is completed with this host's Python and
    name (the values ``env`` brings win), ``extra`` keys are added as they are."""
    ips = latency_ips(batch, latency_ms["median"])
    return {
        "schema": SCHEMA,
        "model": model,
        "backend": backend,
        "precision": precision,
        "batch": batch,
        "input_size": size,
        "images_per_second": ips,
        "images_per_second_is": IMAGES_PER_SECOND_IS,
        "latency_ips": ips,
        "throughput_ips": throughput_ips,
        "latency_ms": latency_ms,
        "runs": runs,
        "warmup_runs": warmup,
        "env": {"python": platform.python_version(), "host": platform.node(), **env},
        **extra,
    }
