"""What a network costs in measured time: a per-layer latency lookup table and the
latency model the budget calibration queries (``resource="latency"``).

NetAdapt-style (Yang et al. 2018): every Conv/Linear of the ancestor is timed once per
target at a grid of (input channels, output channels) -- each grid point one layer alone
(convolution + ReLU) on the deployment batch -- and a network's latency is the sum over
its layers of the table, interpolated bilinearly between grid points, mapped to whole
networks by the table's ``scale * sum + offset_ms`` (fitted on whole networks timed on the
target: a layer timed alone pays its own start and layout changes, a network once; pooling
and concatenation add). The table is plain data (JSON, :data:`TABLE_FORMAT`); measuring it
is the deploy side's job (``squish_plugin.deploy.latency``; on a Jetson, the TX1 kit).

Example:
    >>> from squish_plugin.synthesis.latency import LayerGeometry, LayerGrid
    >>> geometry = LayerGeometry("conv", kernel=(1, 1), stride=(1, 1), padding=(0, 0), in_hw=(13, 13))
    >>> grid = LayerGrid(geometry=geometry, cin=(8, 16), cout=(8, 16), ms=((1.0, 2.0), (2.0, 4.0)))
    >>> round(grid.lookup(12.0, 12.0), 3)
    2.25
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .geometry import LayerGeometry, geometry_of, layer_geometry
from .resources import LinearForm, active_index, channel_form, round_up

__all__ = [
    "TABLE_FORMAT",
    "LatencyModel",
    "LatencyTable",
    "LayerGeometry",
    "LayerGrid",
    "grid_widths",
    "geometry_of",
    "layer_geometry",
    "latency_model",
    "load_table",
]

TABLE_FORMAT = "squish-plugin/latency-table-v1"
GRID_POINTS = 8  # per dimension: widths k/8 of the ancestor's, k = 1..8
BELOW_GRID = ("floor", "extrapolate")  # what a layer narrower than its grid's first width costs


@dataclass(frozen=True, kw_only=True)
class LayerGrid:
    """One layer's measured latency (ms per batch) at ``cin x cout`` grid widths. ``ms`` keeps
    the times as measured (and written back); lookups read their monotone envelope (a model
    the bisections can trust never falls as a layer widens)."""

    geometry: LayerGeometry
    cin: tuple[int, ...]
    cout: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]  # ms[i][j] at cin[i], cout[j], as measured
    envelope: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, axis in (("cin", self.cin), ("cout", self.cout)):
            if not axis or any(b <= a for a, b in zip(axis, axis[1:])) or axis[0] < 1:
                raise InvalidArgumentError(f"a latency grid's {name} must be increasing widths >= 1, got {axis}.")
        if len(self.ms) != len(self.cin) or any(len(row) != len(self.cout) for row in self.ms):
            raise InvalidArgumentError(
                f"a latency grid of {len(self.cin)}x{len(self.cout)} widths needs as many times."
            )
        if any(not (math.isfinite(v) and v >= 0) for row in self.ms for v in row):
            raise InvalidArgumentError("a latency grid's times must be finite milliseconds >= 0.")
        monotone = [list(row) for row in self.ms]  # measured times are noisy
        for i in range(len(self.cin)):
            for j in range(len(self.cout)):
                above = max(monotone[i - 1][j] if i else 0.0, monotone[i][j - 1] if j else 0.0)
                monotone[i][j] = max(monotone[i][j], above)
        object.__setattr__(self, "envelope", tuple(tuple(row) for row in monotone))

    def lookup(self, cin: float, cout: float, *, extrapolate: bool = False) -> float:
        """Bilinear interpolation; above the last grid width refused. Below the first one the
        first width's time (a conservative floor), or with ``extrapolate`` the line through the
        first two widths carried on, never below the first width's time scaled by the width."""
        if cin > self.cin[-1] + 1e-6 or cout > self.cout[-1] + 1e-6:
            raise InvalidArgumentError(
                f"a layer of {cin:.0f} -> {cout:.0f} channels lies outside its latency grid "
                f"(up to {self.cin[-1]} -> {self.cout[-1]}): measure a table for this model."
            )
        i, a = _bracket(self.cin, cin, extrapolate)
        j, b = _bracket(self.cout, cout, extrapolate)
        value = self._bilinear(i, a, j, b)
        if a >= 0 and b >= 0:
            return value
        share = min(cin / self.cin[0], 1.0) * min(cout / self.cout[0], 1.0)
        return max(value, share * self._bilinear(i, max(a, 0.0), j, max(b, 0.0)))

    def _bilinear(self, i: int, a: float, j: int, b: float) -> float:
        i2, j2 = min(i + 1, len(self.cin) - 1), min(j + 1, len(self.cout) - 1)
        m = self.envelope
        top = m[i][j] * (1 - b) + m[i][j2] * b
        bottom = m[i2][j] * (1 - b) + m[i2][j2] * b
        return top * (1 - a) + bottom * a

    def to_dict(self) -> dict[str, Any]:
        widths = {"cin": list(self.cin), "cout": list(self.cout)}
        return {**self.geometry.to_dict(), **widths, "ms": [list(row) for row in self.ms]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerGrid:
        return cls(
            geometry=LayerGeometry.of(data),
            cin=tuple(int(v) for v in data["cin"]),
            cout=tuple(int(v) for v in data["cout"]),
            ms=tuple(tuple(float(v) for v in row) for row in data["ms"]),
        )


def _bracket(axis: Sequence[int], value: float, extrapolate: bool = False) -> tuple[int, float]:
    """``(i, t)``: ``value`` lies ``t`` of the way from ``axis[i]`` to ``axis[i + 1]`` (below
    the first width: ``t`` 0, or negative along the first interval with ``extrapolate``)."""
    if value <= axis[0]:
        if extrapolate and len(axis) > 1:
            return 0, (value - axis[0]) / (axis[1] - axis[0])
        return 0, 0.0
    for i in range(len(axis) - 1):
        if value <= axis[i + 1]:
            return i, (value - axis[i]) / (axis[i + 1] - axis[i])
    return len(axis) - 1, 0.0


@dataclass(frozen=True, kw_only=True)
class LatencyTable:
    """Per-layer latency grids of one network on one target, with what was measured.

    ``target`` names the backend, device, threads, batch and precision; ``round_to`` is
    the channel multiple the target runs fastest (``None`` if not measured), with the
    figures that chose it in ``notes``; ``scale * sum + offset_ms`` turns the sum of layer
    times into the whole network's (1 and 0 if not calibrated). The grids lie on the
    ``round_to`` lattice; a concrete layer with a width off it (its full width aside) runs
    ``off_lattice`` times its interpolated time (fitted on whole networks; 1 if not measured).
    Below a grid's first width, ``below_grid`` says what a layer costs: ``floor`` (the first
    width's time: tables written before it was measured, and their runs) or ``extrapolate``
    (see :meth:`LayerGrid.lookup`)."""

    target: Mapping[str, Any]
    layers: Mapping[str, LayerGrid]
    round_to: int | None = None
    scale: float = 1.0
    offset_ms: float = 0.0
    off_lattice: float = 1.0
    notes: Mapping[str, Any] = field(default_factory=dict)
    below_grid: str = "floor"

    def __post_init__(self) -> None:
        if self.below_grid not in BELOW_GRID:
            raise InvalidArgumentError(f"below_grid must be one of {', '.join(BELOW_GRID)}, got {self.below_grid!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "target": dict(self.target),
            "scale": self.scale,
            "offset_ms": self.offset_ms,
            "off_lattice": self.off_lattice,
            "round_to": self.round_to,
            "below_grid": self.below_grid,
            "notes": dict(self.notes),
            "layers": {name: grid.to_dict() for name, grid in sorted(self.layers.items())},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "the latency table") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise InvalidArgumentError(f"{source} is not a latency table (format {TABLE_FORMAT!r} expected).")
        try:
            layers = {str(name): LayerGrid.from_dict(g) for name, g in data["layers"].items()}
            scale, round_to = float(data.get("scale", 1.0)), data.get("round_to")
            offset, off = float(data.get("offset_ms", 0.0)), float(data.get("off_lattice", 1.0))
            round_to = None if round_to is None else int(round_to)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"{source} is malformed ({type(exc).__name__}: {exc}).") from None
        if not layers or not (math.isfinite(scale) and scale > 0) or (round_to is not None and round_to < 1):
            raise InvalidArgumentError(f"{source} needs layers, a scale > 0 and round_to None or >= 1.")
        if not math.isfinite(offset) or not (math.isfinite(off) and off > 0):
            raise InvalidArgumentError(f"{source}: offset_ms must be finite (ms) and off_lattice a number > 0.")
        target, notes = dict(data.get("target", {})), dict(data.get("notes", {}))
        kw = {"scale": scale, "offset_ms": offset, "off_lattice": off, "notes": notes}
        try:  # the table checks its below_grid rule itself; say which file holds a bad one
            return cls(
                target=target, layers=layers, round_to=round_to, below_grid=data.get("below_grid", "floor"), **kw
            )
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{source}: {exc}") from None

    def whole_ms(self, layer_sum: float) -> float:
        """The whole network's ms for a sum of layer times (never below 5% of the scaled sum:
        a negative offset must not make a small network free)."""
        return max(self.scale * layer_sum + self.offset_ms, 0.05 * self.scale * layer_sum)

    def off_grid(self, name: str, cin: float, cout: float) -> bool:
        """Whether a concrete layer's widths leave the ``round_to`` lattice (a dimension at
        its full width, such as the image's 3 channels, stays on it)."""
        m, grid = self.round_to or 1, self.layers[name]
        return m > 1 and any(
            round(w) % m and round(w) != top for w, top in ((cin, grid.cin[-1]), (cout, grid.cout[-1]))
        )

    def example_inputs(self) -> torch.Tensor:
        """One image of the table's ``input_size`` (224 px if it names none)."""
        size = int(self.target.get("input_size", 224))
        return torch.zeros(1, 3, size, size)

    def layer_ms(self, name: str, cin: float, cout: float) -> float:
        if name not in self.layers:
            raise InvalidArgumentError(f"the latency table has no layer '{name}': measure a table for this model.")
        return self.layers[name].lookup(cin, cout, extrapolate=self.below_grid == "extrapolate")

    def split_ms(self, widths: Iterable[tuple[str, float, float]]) -> tuple[float, float]:
        """The raw layer sums ``(on, off the lattice)`` of the layers ``(name, cin, cout)``."""
        on = off = 0.0
        for name, cin, cout in widths:
            ms = self.layer_ms(name, cin, cout)
            on, off = (on, off + ms) if self.off_grid(name, cin, cout) else (on + ms, off)
        return on, off


def load_table(path: str | os.PathLike) -> LatencyTable:
    """Read a latency table file (JSON; never executes anything)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"latency table '{path}' does not exist.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"latency table '{path}' is not readable JSON ({exc}).") from None
    return LatencyTable.from_dict(data, f"latency table '{path}'")


def grid_widths(width: int, step: int | None = None, points: int = GRID_POINTS) -> tuple[int, ...]:
    """The grid of one dimension: ``k / points`` of ``width`` for ``k = 1..points``, each
    rounded up to a multiple of ``step`` (a layer's widths under ``round_to``), at most
    ``width``."""
    step = max(int(step or 1), 1)
    values = {min(width, round_up(math.ceil(width * k / points), step)) for k in range(1, points + 1)}
    return tuple(sorted(values))


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class LatencyTerm:
    """One layer: its table entry and its input / output widths as linear forms of the
    kept fractions (as :class:`~squish_plugin.synthesis.resources.ResourceTerm`)."""

    name: str
    cin: LinearForm
    cout: LinearForm


@dataclass(frozen=True)
class LatencyModel:
    """A network's latency (ms per batch on the table's target) as a function of the
    kept fractions of its ``layers`` prunable layers; callable like a
    :class:`~squish_plugin.synthesis.resources.ResourceModel`, so the calibration and the
    repair to the budget work on it unchanged."""

    table: LatencyTable
    terms: tuple[LatencyTerm, ...]
    layers: int

    def __call__(self, fractions: torch.Tensor | Sequence[float]) -> float:
        f = [float(v) for v in fractions]
        total = sum(self.table.layer_ms(t.name, t.cin(f), t.cout(f)) for t in self.terms)
        return float(self.table.whole_ms(total))

    def split_ms(self, fractions: Sequence[float]) -> tuple[float, float]:
        """The table's raw layer sums ``(on, off the lattice)`` of the concrete widths at ``fractions``."""
        f = [float(v) for v in fractions]
        return self.table.split_ms((t.name, t.cin(f), t.cout(f)) for t in self.terms)

    def network_ms(self, fractions: Sequence[float]) -> float:
        """A concrete network's latency (integer widths): ``self(fractions)`` with its layers
        off the lattice ``off_lattice`` times slower (the budget's calculus, on expected
        fractions, leaves that step out)."""
        on, off = self.split_ms(fractions)
        return float(self.table.whole_ms(on + self.table.off_lattice * off))

    def restrict(self, active: Sequence[int], size: int) -> LatencyModel:
        """The same latency with only the layers ``active`` free (see ``ResourceModel.restrict``)."""
        index = active_index(active, size)
        terms = tuple(LatencyTerm(t.name, t.cin.renumbered(index), t.cout.renumbered(index)) for t in self.terms)
        return LatencyModel(self.table, terms, len(active))


def check_geometry(table: LatencyTable, geometry: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse, in one sentence, a table measured for another network or input size."""
    for name, geo in geometry.items():
        grid = table.layers.get(name)
        if grid is None:
            raise InvalidArgumentError(f"the latency table has no layer '{name}': measure a table for this model.")
        want = LayerGeometry.of(geo)
        if grid.geometry != want:
            raise InvalidArgumentError(
                f"layer '{name}' is {want} here but {grid.geometry} in the latency table: "
                "measure a table for this model and input size."
            )


def latency_model(
    model: nn.Module,
    table: LatencyTable,
    out_dims: Mapping[nn.Module, Mapping[int, int]],
    in_dims: Mapping[nn.Module, Mapping[int, int]],
    geometry: Mapping[str, Mapping[str, Any]],
    layers: int,
) -> LatencyModel:
    """``model``'s latency on ``table``'s target as a function of the kept fractions of its
    ``layers`` prunable layers (couplings as for ``resource_model``; ``geometry`` of every
    Conv/Linear that runs, as :func:`layer_geometry` gives it); the table must hold every
    one of them, measured at the same geometry."""
    check_geometry(table, geometry)
    modules = dict(model.named_modules())
    terms = []
    for name in geometry:  # model order, the same in every process
        module = modules[name]
        n_in, n_out = geometry[name]["cin"], geometry[name]["cout"]
        terms.append(
            LatencyTerm(
                name, channel_form(n_in, in_dims.get(module, {})), channel_form(n_out, out_dims.get(module, {}))
            )
        )
    return LatencyModel(table, tuple(terms), layers)
