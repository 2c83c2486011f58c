"""Fitting a latency table's whole-network terms on networks timed whole on its target.

A table sums per-layer times measured one layer at a time; a runtime runs a whole network
differently (ONNX Runtime keeps blocked layouts across aligned layers, fuses, and pays a
fixed cost per run). Three numbers turn the sums into whole-network times:
``measured = scale * (on + off_lattice * off) + offset_ms``, where ``on`` and ``off`` are a
network's layer sums on and off the table's ``round_to`` lattice. Linear in
``(scale, scale * off_lattice, offset_ms)``, they are fitted by least squares on *relative*
errors (each network's residual over its measured time: a 12 ms network counts as much as a
120 ms one, as in the percentages a latency model is judged by) over all the calibration
networks at once (timed in one interleaved run, so a machine that drifts drifts
for all of them alike), and the residuals are kept in the table's ``notes``.

Example:
    >>> from squish_plugin.synthesis.latency import LatencyTable, LayerGeometry, LayerGrid
    >>> geometry = LayerGeometry("conv", kernel=(1, 1), stride=(1, 1), padding=(0, 0), in_hw=(8, 8))
    >>> grid = LayerGrid(geometry=geometry, cin=(8,), cout=(8, 16), ms=((1.0, 2.0),))
    >>> table = LatencyTable(target={"backend": "fake"}, layers={"conv": grid}, round_to=8)
    >>> fitted = fit_splits(table, {"a": (1.0, 0.0), "b": (2.0, 0.0), "c": (1.0, 1.0)}, {"a": 3, "b": 5, "c": 7})
    >>> round(fitted.scale, 6), round(fitted.offset_ms, 6), round(fitted.off_lattice, 6)
    (2.0, 1.0, 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from torch import nn

from ...errors import InvalidArgumentError
from ...synthesis.latency import LatencyTable, layer_geometry

__all__ = ["fit_splits", "fit_whole", "layer_splits"]


def layer_splits(table: LatencyTable, models: Mapping[str, nn.Module]) -> dict[str, tuple[float, float]]:
    """Each network's raw layer sums ``(on, off the lattice)`` in ``table`` (ms)."""
    splits = {}
    for name in sorted(models):
        geometry = layer_geometry(models[name], table.example_inputs())
        splits[name] = table.split_ms((k, g["cin"], g["cout"]) for k, g in sorted(geometry.items()))
    return splits


def fit_whole(table: LatencyTable, models: Mapping[str, nn.Module], measured_ms: Mapping[str, float]) -> LatencyTable:
    """``table`` with ``scale``, ``offset_ms`` and ``off_lattice`` fitted so that it predicts
    each of ``models``' ``measured_ms`` (whole networks timed on the table's target)."""
    return fit_splits(table, layer_splits(table, models), measured_ms)


def fit_splits(
    table: LatencyTable, splits: Mapping[str, tuple[float, float]], measured_ms: Mapping[str, float]
) -> LatencyTable:
    """:func:`fit_whole` on each network's raw layer sums ``(on, off)``. With no network off
    the lattice, ``off_lattice`` stays (with none on it, it is 1); with one network, the
    scale alone is fitted."""
    names = sorted(splits)
    on = np.array([float(splits[n][0]) for n in names])
    off = np.array([float(splits[n][1]) for n in names])
    y = np.array([float(measured_ms[n]) for n in names])
    if not ((on + off) > 0).all():
        raise InvalidArgumentError("the latency table predicts 0 ms for a network: its timer returned no time.")
    if len(names) == 1:
        scale = slow = float(y[0] / (on[0] + off[0]))
        offset = 0.0
    elif not (on.any() and off.any()):  # one kind of layer only: a line through the sums
        scale, offset = (float(v) for v in np.polyfit(on + off, y, 1, w=1 / y))
        slow = scale * (table.off_lattice if on.any() else 1.0)
    else:
        design = np.stack([on, off, np.ones_like(on)], axis=1) / y[:, None]
        coef = np.linalg.lstsq(design, np.ones_like(y), rcond=None)[0]
        scale, slow, offset = (float(v) for v in coef)
    if not scale > 0:
        raise InvalidArgumentError(
            "the whole networks' times do not grow with the table's: measure on an idle machine."
        )
    if not slow > 0:
        raise InvalidArgumentError(
            "the off-lattice networks ran faster than the table allows: measure on an idle machine."
        )
    fitted = replace(table, scale=scale, offset_ms=offset, off_lattice=slow / scale)
    rows = {
        n: {
            "on_lattice_ms": round(a, 4),
            "off_lattice_ms": round(b, 4),
            "measured_ms": round(m, 4),
            "error": round(fitted.whole_ms(a + fitted.off_lattice * b) / m - 1, 4),
        }
        for n, a, b, m in zip(names, on.tolist(), off.tolist(), y.tolist())
    }
    return replace(fitted, notes={**dict(table.notes), "calibration": rows})
