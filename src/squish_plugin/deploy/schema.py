"""The one result format every throughput backend writes: ``squish-plugin/bench-v1``.

Example:
    >>> from squish_plugin.deploy.schema import SCHEMA, bench_result
    >>> r = bench_result("ancestor", "pytorch", "fp32", 32, 224, images_per_second=500.0,
    ...                  latency_ms={"median": 64.0}, runs=10, warmup=3, env={"device": "cpu"})
    >>> r["schema"] == SCHEMA, r["env"]["device"]
    (True, 'cpu')
"""

from __future__ import annotations

import platform
from typing import Any

__all__ = ["LATENCY_KEYS", "RESULT_KEYS", "SCHEMA", "bench_result"]

#: the schema tag of a throughput result (the Jetson kit's script carries its own copy,
#: as it runs without the package; a test keeps the two equal)
SCHEMA = "squish-plugin/bench-v1"
#: what ``latency_ms`` holds, milliseconds per batch
LATENCY_KEYS = ("median", "p90", "mean", "min", "max")
#: the keys every result has
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


def bench_result(
    model: str,
    backend: str,
    precision: str,
    batch: int,
    size: int,
    *,
    images_per_second: float,
    latency_ms: dict[str, Any],
    runs: int,
    warmup: int,
    env: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """A result in the shared schema; ``env`` is completed with this host's Python and
    name (the values ``env`` brings win), ``extra`` keys are added as they are."""
    return {
        "schema": SCHEMA,
        "model": model,
        "backend": backend,
        "precision": precision,
        "batch": batch,
        "input_size": size,
        "images_per_second": images_per_second,
        "latency_ms": latency_ms,
        "runs": runs,
        "warmup_runs": warmup,
        "env": {"python": platform.python_version(), "host": platform.node(), **env},
        **extra,
    }
