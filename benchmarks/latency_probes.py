"""Issue #28 B: changes tried on the latency table (kept and not), made reproducible.

Two parts. ``--sitting`` times, in one sitting (one process): the table as `latency_model.py`
measures it (with its calibration networks; every layer timing recorded, one per pass over the
grid), an *off-lattice grid* (every layer timed alone at ``w - 7`` for each of its prunable grid
widths ``w``: odd widths, off the 16-lattice), the same 51 networks as `latency_model.py` and 8
tiny networks (:func:`tiny_networks`), interleaved; the raw timings go to
``results/latency/probe-sitting-N.json``. Without ``--sitting`` it times nothing and evaluates,
on the committed sitting (`model-table.json` + `model-error.csv`) and on every probe sitting:

- ``as shipped``: the table's own model (``scale * (on + off_lattice * off) + offset``);
- ``off-lattice grid``: layers off the lattice priced from the off-lattice grid (probe sitting only);
- ``a term in the off-lattice layers' MACs``: ``+ c * (their multiply-accumulates)`` beside their
  times (a penalty that grows with the compute, not with the fixed cost of a tiny layer);
- ``a term in the activations between layers on and off the lattice``: ``+ c * (the values that
  pass between a layer on the 16-lattice and one off it)``, where ONNX Runtime changes layout;
- ``proportional below a one-point axis``: a prunable axis whose grid holds one width (the first
  Fire modules' squeeze: 16) priced in proportion to the width below it instead of at its floor;
- ``untimed layers priced by a regression``: a layer at widths its grid never timed (off the
  lattice, or under the grid's first width) priced from a line in ``(multiply-accumulates, values
  read, values written, 1)`` with non-negative costs, fitted on relative errors (nn-Meter's
  regressors, on our grid): one line per kind of kernel (op, kernel, stride) over the grids of
  every layer of that kind, or a line per layer where its grid varies both widths (a one-width axis
  leaves the split between the costs that grow with it and those that do not undetermined) and the
  kind's line elsewhere;
- ``a term in the values ONNX Runtime's Reorder kernels copy``: ``+ c * (M values per batch)``
  read from each network's optimised graph (:func:`ort_layouts`: where the CPU provider's NCHWc
  transformer leaves a layer in NCHW it inserts ReorderInput / ReorderOutput kernels); with the
  layers split into ``(on, off)`` by the layout ONNX Runtime runs them in (blocked or not)
  instead of by the lattice; and that with every cost non-negative (the offset pinned at 0
  where it would go negative);
- ``the grid's first pass only``: where the layer timings were recorded, the table a single
  pass over the grid would have given (the table keeps each point's fastest of ``GRID_PASSES``);
- ``..., calibrated with the tiny networks too``: where they were timed, in the calibration set;
- leave-one-out over the calibration networks (each fitted on the others, predicted), the fit
  weighing relative errors (shipped) and absolute ones.

    python benchmarks/latency_probes.py --sitting   # ~5 min, idle machine
    python benchmarks/latency_probes.py             # -> benchmarks/results/latency/probes.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_model as lm  # noqa: E402
from squish_plugin import squeezenet1_1_ancestor  # noqa: E402
from squish_plugin.deploy.backends import MachineLoad  # noqa: E402
from squish_plugin.deploy.latency import (  # noqa: E402
    ROUND_TO_CANDIDATES,
    calibration_networks,
    cut_to,
    layer_grids,
    layer_macs,
    time_networks,
    with_widths,
)  # noqa: E402
from squish_plugin.deploy.latency.grid import _prunable_dims  # noqa: E402
from squish_plugin.deploy.latency.timers import onnxruntime_layer_timer, out_hw  # noqa: E402
from squish_plugin.synthesis.latency import (  # noqa: E402
    LatencyTable,
    LayerGeometry,
    LayerGrid,
    layer_geometry,
    load_table,
)

LAT = lm.RESULTS / "latency"
INPUTS = torch.zeros(1, 3, 224, 224)


def tiny_networks(ancestor: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Networks as small as the studies' last generations, for the calibration set: every width cut
    to 0.12 and 0.2 (on the 16-lattice and off it), and 4 of seeded random widths at 8-35% of each
    layer (alternately on the lattice and off it)."""
    nets = {f"tiny-round{m}-cut{f}": cut_to(ancestor, f, m, INPUTS) for m in (1, 16) for f in (0.12, 0.2)}
    for i, layer_widths in enumerate(_tiny_widths(ancestor)):
        nets[f"tiny-random-{i}"] = with_widths(ancestor, layer_widths, INPUTS)
    return nets


def _tiny_widths(ancestor: torch.nn.Module, count: int = 4) -> list[dict[str, int]]:
    from squish_plugin.synthesis.surgery import Surgeon

    layers, out = Surgeon(ancestor, INPUTS).layers, []
    for i in range(count):
        rng, multiple = np.random.default_rng([2000, i]), 16 if i % 2 == 0 else 1
        keep = {x.name: max(1, round(x.width * rng.uniform(0.08, 0.35))) for x in layers}
        out.append({x.name: min(x.width, multiple * math.ceil(keep[x.name] / multiple)) for x in layers})
    return out


def _geometry_key(geometry: LayerGeometry) -> str:
    return json.dumps(geometry.to_dict(), sort_keys=True)


def first_pass_table(table: LatencyTable, calls: list[list]) -> LatencyTable:
    """``table`` with every grid point at its first pass's time (the table one pass would have
    given), fitted again on the same calibration timings."""
    first: dict[tuple, float] = {}
    for key, cin, cout, ms in calls:
        first.setdefault((key, cin, cout), ms)
    layers = {name: replace(g, ms=tuple(tuple(first[(_geometry_key(g.geometry), a, b)] for b in g.cout) for a in g.cin))
              for name, g in table.layers.items()}  # fmt: skip
    return replace(table, layers=layers)


def sitting(out: Path) -> None:
    from squish_plugin.study.latency import TableTimers, ensure_table, target_timers
    from squish_plugin.study.recipe import load_recipe

    torch.set_num_threads(2)
    started = time.perf_counter()
    ancestor = squeezenet1_1_ancestor(10, weights=None).eval()
    calls: list[list] = []  # every layer timing in order: GRID_PASSES passes over the grid

    def layer(geo, cin, cout):
        calls.append([_geometry_key(LayerGeometry.of(geo)), cin, cout, float(timer(geo, cin, cout))])
        return calls[-1][3]

    with tempfile.TemporaryDirectory() as tmp, MachineLoad() as load:
        os.environ["SQUISH_CACHE"] = tmp
        recipe = load_recipe(lm.ROOT / "examples" / "imagenette-latency.yaml", ["evolution.round_to=16"])
        timer, timers = onnxruntime_layer_timer(batch=32, threads=2), target_timers(recipe)
        table = load_table(ensure_table(recipe, force=True, timers=TableTimers(layer, timers.networks)))
        prunable, off = _prunable_dims(ancestor, INPUTS), {}
        for name, (geo, cins, couts) in sorted(layer_grids(ancestor, INPUTS, 16, table.notes["grid_points"]).items()):
            free_in, free_out = prunable.get(name, (False, False))
            oc = [w - 7 for w in cins] if free_in else list(cins)
            oo = [w - 7 for w in couts] if free_out else list(couts)
            off[name] = {"cin": oc, "cout": oo, "ms": [[float(timer(geo, a, b)) for b in oo] for a in oc]}
        nets = {n: m for n, (_, _, m) in lm.networks(ancestor, 0, 12, 16).items()} | tiny_networks(ancestor)
        measured = time_networks(nets, "onnxruntime", batch=32, threads=2)  # the 51 and the tiny ones, interleaved
    record = {"table": table.to_dict(), "off_grid": off, "measured_ms": measured, "load": load.record(),
              "layer_calls": calls,
              "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    out.write_text(json.dumps(record, indent=1) + "\n")


def _fit(x: np.ndarray, y: np.ndarray, relative: bool) -> np.ndarray:
    w = 1 / y if relative else np.ones_like(y)
    return np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]


def _predict(x: np.ndarray, coef: np.ndarray) -> np.ndarray:
    return np.maximum(x @ coef, 0.05 * coef[0] * x[:, 0])  # as LatencyTable.whole_ms floors it


FIRES = (3, 4, 6, 7, 9, 10, 11, 12)  # SqueezeNet v1.1's Fire modules (features.N)


def _edges() -> list[tuple[str, str]]:
    """Producer -> consumer of every convolution's output in SqueezeNet v1.1 (pools and concats between)."""
    edges = [("features.0", "features.3.squeeze")]
    for i, f in enumerate(FIRES):
        after = f"features.{FIRES[i + 1]}.squeeze" if i + 1 < len(FIRES) else "classifier.1"
        edges += [(f"features.{f}.squeeze", f"features.{f}.expand{e}") for e in ("1x1", "3x3")]
        edges += [(f"features.{f}.expand{e}", after) for e in ("1x1", "3x3")]
    return edges


def _work(geometry: LayerGeometry, cin: float, cout: float) -> list[float]:
    """What a layer's time grows with, per batch of 32: G multiply-accumulates, M values read and
    written, and the call."""
    geo = geometry.to_dict()
    ins, outs = math.prod(geometry.in_hw), math.prod(out_hw(geo))
    return [32e-9 * layer_macs(geo, cin, cout), 32e-6 * cin * ins, 32e-6 * cout * outs, 1.0]


def _nonnegative_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares, every coefficient >= 0, relative errors (the best column subset whose own fit is >= 0)."""
    x, y = x / y[:, None], np.ones_like(y)
    best, residual = np.zeros(x.shape[1]), float(len(y))
    for mask in range(1, 2 ** x.shape[1]):
        cols = [c for c in range(x.shape[1]) if mask >> c & 1]
        coef = np.linalg.lstsq(x[:, cols], y, rcond=None)[0]
        r = float(np.sum((x[:, cols] @ coef - y) ** 2))
        if coef.min() >= 0 and r < residual - 1e-12:
            best, residual = np.zeros(x.shape[1]), r
            best[cols] = coef
    return best


def regressions(table: LatencyTable, per_layer: bool) -> dict[str, np.ndarray]:
    """``{layer: coefficients of _work}``: the line of its kind of kernel, or (``per_layer``) its own
    where its grid varies both widths."""

    def points(names):
        rows = [(_work(table.layers[n].geometry, a, b), ms) for n in names for a, row in
                zip(table.layers[n].cin, table.layers[n].ms) for b, ms in zip(table.layers[n].cout, row)]  # fmt: skip
        return np.array([r for r, _ in rows]), np.array([m for _, m in rows])

    kinds: dict[tuple, list[str]] = {}
    for name, g in sorted(table.layers.items()):
        kinds.setdefault((g.geometry.op, g.geometry.kernel, g.geometry.stride), []).append(name)
    lines = {}
    for names in kinds.values():
        line = _nonnegative_fit(*points(names))
        for n in names:
            g = table.layers[n]
            own = per_layer and len(g.cin) > 1 and len(g.cout) > 1
            lines[n] = _nonnegative_fit(*points([n])) if own else line
    return lines


LAYOUTS = LAT / "ort-layouts.json"


def _layer_of(output: str) -> str:
    """The SqueezeNet layer of ONNX Runtime's fused Conv+Relu kernel (named after its Relu)."""
    fire = re.search(r"features\.(\d+)/(squeeze|expand1x1|expand3x3)_activation", output)
    if fire:
        return f"features.{fire[1]}.{fire[2]}"
    if "/features/features.1/Relu" in output:
        return "features.0"
    if "/classifier/classifier.2/Relu" in output:
        return "classifier.1"
    raise ValueError(f"no SqueezeNet layer in ONNX Runtime's kernel {output!r}")


def ort_layouts(models: dict[str, torch.nn.Module]) -> dict[str, dict]:
    """``{widths key (:func:`_widths_key`): {"nchwc": [layers ONNX Runtime runs in its blocked
    layout], "reorder_mvalues": M values per batch its Reorder kernels copy}}`` of ``models``, read
    from each network's optimised graph (the CPU provider's NCHWc transformer;
    ``latency_kernels.optimised_graph``), cached in ``results/latency/ort-layouts.json`` (it
    depends on the CPU's vector width and ONNX Runtime's version, not on timing: derived once on
    this Xeon, AVX-512, ONNX Runtime 1.32)."""
    import onnx

    import latency_kernels as lk

    cache = json.loads(LAYOUTS.read_text()) if LAYOUTS.exists() else {}
    keyed = {_widths_key(widths(m)): m for m in models.values()}
    todo = {k: m for k, m in keyed.items() if k not in cache}
    with tempfile.TemporaryDirectory() as tmp:
        for key, model in sorted(todo.items()):
            opt = lk.optimised_graph(model, Path(tmp), "n")
            shapes = lk.node_profile(opt, Path(tmp))
            nodes = onnx.load(str(opt)).graph.node
            convs = [n for n in nodes if n.domain.endswith("nchwc") and n.op_type == "Conv"]
            nchwc = sorted(_layer_of(f"{n.name} {n.output[0]}") for n in convs)
            moved = sum(math.prod(shapes[n.name]["inputs"][0]) for n in nodes if n.op_type.startswith("Reorder"))
            cache[key] = {"nchwc": nchwc, "reorder_mvalues": round(moved / 1e6, 4)}
    if todo:
        LAYOUTS.write_text(json.dumps(dict(sorted(cache.items())), indent=0) + "\n")
    return {key: cache[key] for key in keyed}


def _widths_key(layers: list[tuple[str, int, int, float, float]]) -> str:
    """A network's key in the layouts: its ``(layer, cin, cout)`` from :func:`widths`."""
    return json.dumps([[k, cin, cout] for k, cin, cout, _, _ in layers])


class Pricing:
    """Each network's features under one variant of the table: its ``(on, off)`` layer sums;
    with ``macs`` the off-lattice layers' multiply-accumulates (G per batch of 32); with
    ``transitions`` the activations (M values per batch) that pass between a layer on the
    lattice and one off it (where ONNX Runtime changes layout)."""

    def __init__(self, table: LatencyTable, off_grid: dict | None = None, *, proportional: bool = False,
                 macs: bool = False, transitions: bool = False, lines: dict | None = None, layouts: dict | None = None,
                 layout_split: bool = False, nonnegative: bool = False) -> None:  # fmt: skip
        self.table, self.proportional, self.macs, self.transitions = table, proportional, macs, transitions
        self.lines, self.layouts, self.layout_split, self.nonnegative = lines, layouts, layout_split, nonnegative
        self.off = {n: LayerGrid(geometry=table.layers[n].geometry, cin=tuple(d["cin"]), cout=tuple(d["cout"]),
                                 ms=tuple(tuple(r) for r in d["ms"])) for n, d in (off_grid or {}).items()}  # fmt: skip

    def layer(self, name: str, cin: int, cout: int, off: bool) -> float:
        if off and self.off:
            g = self.off[name]
            return g.lookup(min(cin, g.cin[-1]), min(cout, g.cout[-1]), extrapolate=True)
        ms, g = self.table.layer_ms(name, cin, cout), self.table.layers[name]
        if self.lines and (off or cin < g.cin[0] or cout < g.cout[0]):
            return float(np.dot(_work(g.geometry, cin, cout), self.lines[name]))
        if self.proportional:  # a one-point axis: in proportion below its width, not at its floor
            ms *= min(cin / g.cin[0], 1) if len(g.cin) == 1 else 1
            ms *= min(cout / g.cout[0], 1) if len(g.cout) == 1 else 1
        return ms

    def features(self, layers: list[tuple[str, int, int, float, float]]) -> list[float]:
        on = off = off_macs = 0.0
        aligned, volume = {}, {}
        layout = self.layouts[_widths_key(layers)] if self.layouts else None
        for name, cin, cout, gmacs, out_m in layers:
            o = self.table.off_grid(name, cin, cout)
            ms = self.layer(name, cin, cout, o)
            o = name not in layout["nchwc"] if self.layout_split else o  # ONNX Runtime's own split
            on, off, off_macs = (on, off + ms, off_macs + gmacs) if o else (on + ms, off, off_macs)
            aligned[name], volume[name] = not o, out_m
        out = [on, off] + ([off_macs] if self.macs else [])
        if self.transitions:
            out.append(sum(volume[a] for a, b in _edges() if aligned[a] != aligned[b]))
        if layout:
            out.append(layout["reorder_mvalues"])
        return out


def widths(model: torch.nn.Module) -> list[tuple[str, int, int, float, float]]:
    """``(layer, cin, cout, G multiply-accumulates, M output values)`` of every Conv/Linear of
    ``model``, per batch of 32."""
    geometry = sorted(layer_geometry(model, INPUTS).items())
    return [(k, g["cin"], g["cout"], 32e-9 * layer_macs(g, g["cin"], g["cout"]),
             32e-6 * g["cout"] * math.prod(out_hw(g))) for k, g in geometry]  # fmt: skip


def evaluate(pricing: Pricing, calibration: dict, cal_ms: dict, nets: dict, measured: dict) -> dict:
    """``calibration`` and ``nets``: ``{name: widths(model)}``."""
    x_cal = np.array([[*pricing.features(calibration[n]), 1.0] for n in sorted(cal_ms)])
    y_cal = np.array([cal_ms[n] for n in sorted(cal_ms)])
    x = np.array([[*pricing.features(nets[n]), 1.0] for n in nets])
    y = np.array([measured[n] for n in nets])
    fit = (lambda x, y, relative: _nonnegative_fit(x, y)) if pricing.nonnegative else _fit  # noqa: E731
    coef = fit(x_cal, y_cal, relative=True)
    err = _predict(x, coef) / y - 1
    worst = sorted(zip(nets, err.tolist()), key=lambda t: -abs(t[1]))[:5]
    loo = {}
    for label, relative in (("relative", True), ("absolute", False)):
        e = [_predict(x_cal[i : i + 1], fit(np.delete(x_cal, i, 0), np.delete(y_cal, i), relative))[0] / y_cal[i] - 1
             for i in range(len(y_cal))]  # fmt: skip
        loo[label] = round(float(np.sqrt(np.mean(np.square(e)))), 4)
    return {**lm.error_figures(err), "scale": round(coef[0], 4), "off_lattice": round(coef[1] / coef[0], 4),
            "offset_ms": round(coef[-1], 3), "coefficients": [round(c, 4) for c in coef.tolist()],
            "calibration_loo_rmspe": loo,
            "worst": {n: round(e, 4) for n, e in worst}}  # fmt: skip


def analyse(out: Path) -> None:
    ancestor = squeezenet1_1_ancestor(10, weights=None).eval()
    net_models = {n: m for n, (_, _, m) in lm.networks(ancestor, 0, 12, 16).items()}
    nets = {n: widths(m) for n, m in net_models.items()}
    with (LAT / "model-error.csv").open() as fh:
        committed = {r["network"]: float(r["measured_ms"]) for r in csv.DictReader(fh)}
    sittings = {"committed (sitting 3)": (load_table(LAT / "model-table.json"), None, committed, None)}
    for path in sorted(LAT.glob("probe-sitting-*.json")):
        raw = json.loads(path.read_text())
        label = f"probe sitting {path.stem.rsplit('-', 1)[1]}"
        sittings[label] = (
            LatencyTable.from_dict(raw["table"]),
            raw["off_grid"],
            raw["measured_ms"],
            raw.get("layer_calls"),
        )
    tiny_models = tiny_networks(ancestor)
    tiny = {n: widths(m) for n, m in tiny_models.items()}
    result = {}
    for label, (table, off_grid, measured, calls) in sittings.items():
        table = replace(table, below_grid="extrapolate")
        cal_ms = {n: r["measured_ms"] for n, r in table.notes["calibration"].items()}
        multiples = ROUND_TO_CANDIDATES if "round_to_figures" in table.notes else table.round_to  # as measured
        calibration_models = calibration_networks(ancestor, multiples, INPUTS)
        calibration_models = {n: calibration_models[n] for n in cal_ms}
        calibration = {n: widths(calibration_models[n]) for n in cal_ms}
        variants = {
            "as shipped": Pricing(table),
            "proportional below a one-point axis": Pricing(table, proportional=True),
            "a term in the off-lattice layers' MACs": Pricing(table, macs=True),
            "a term in the activations between layers on and off the lattice": Pricing(table, transitions=True),
            "untimed layers priced by a regression per kind of kernel": Pricing(table, lines=regressions(table, False)),
            "untimed layers priced by a regression per layer (two-width grids), per kind elsewhere": Pricing(
                table, lines=regressions(table, True)
            ),
        }
        models = {**{f"cal:{n}": m for n, m in calibration_models.items()}, **net_models, **tiny_models}
        layouts = ort_layouts(models)
        variants["a term in the values ONNX Runtime's Reorder kernels copy (its optimised graph)"] = Pricing(
            table, layouts=layouts
        )
        variants["the same, layers split by the layout ONNX Runtime runs them in, not by the lattice"] = Pricing(
            table, layouts=layouts, layout_split=True
        )
        variants["the same, every cost non-negative (no negative offset)"] = Pricing(
            table, layouts=layouts, layout_split=True, nonnegative=True
        )
        if off_grid:
            variants["off-lattice grid"] = Pricing(table, off_grid)
        if calls:  # the grid timed in several passes: the table its first pass alone would have given
            variants["the grid's first pass only (one pass)"] = Pricing(first_pass_table(table, calls))
        result[label] = {v: evaluate(p, calibration, cal_ms, nets, measured) for v, p in variants.items()}
        if all(n in measured for n in tiny):  # the calibration set with the tiny networks timed beside it
            more = {**calibration, **tiny}, {**cal_ms, **{n: measured[n] for n in tiny}}
            for v in ("as shipped", "proportional below a one-point axis",
                      "the same, layers split by the layout ONNX Runtime runs them in, not by the lattice",
                      "the same, every cost non-negative (no negative offset)"):  # fmt: skip
                result[label][f"{v}, calibrated with the tiny networks too"] = evaluate(
                    variants[v], *more, nets, measured
                )
        if label.startswith("probe"):
            result[label]["against the committed timings (probe / committed)"] = _drift(measured, committed)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _drift(measured: dict, committed: dict) -> dict:
    ratio = {n: measured[n] / committed[n] for n in committed}
    same = [measured[f"latency-gen{g}"] for g in range(10, 16)]  # six identical networks
    spread = {"median": float(np.median(list(ratio.values()))), "min": min(ratio.values()), "max": max(ratio.values())}
    return {**{k: round(v, 4) for k, v in spread.items()}, "identical_latency_gen10_15_ms": [round(v, 2) for v in same]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sitting", action="store_true", help="time a new probe sitting (idle machine, ~5 min)")
    args = parser.parse_args()
    if args.sitting:
        taken = [int(p.stem.rsplit("-", 1)[1]) for p in LAT.glob("probe-sitting-*.json")]
        return sitting(LAT / f"probe-sitting-{max(taken, default=0) + 1}.json")
    analyse(LAT / "probes.json")


if __name__ == "__main__":
    main()
