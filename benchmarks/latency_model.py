"""Issue #28 B: how well the latency table predicts whole networks on its own target, the table
and every network timed in ONE sitting (one process, networks interleaved round by round).

Networks (structures only: speed depends on widths, not weights), all SqueezeNet-10 at 224 px:
the ancestor; every generation of the latency-aware study (`benchmarks/results/imagenette-latency/
seed-S`, kind `latency`, parent = the generation before) and of the parameter-budget study
(`imagenette-seeds/seed-S`, kind `params`); NNI's L1 pruner on the parameter-budget
study's schedule, generations 1-8 (kind `nni`); and seeded random-width networks never used in
fitting (kind `random`, seeds 1000+, half on the table's lattice). The table is measured first,
as `squish-plugin bench table examples/imagenette-latency.yaml --force` measures it (ONNX Runtime
CPU EP, fp32, batch 32, 2 threads), into a temporary cache, on the lattice the latency-aware study
drew its networks on (its own table's `round_to`, 16; `--round-to auto` lets the table choose again:
in one sitting it chose 32, and the study's 16-lattice networks then ran off it). The networks
judged are timed after the table, interleaved among themselves; `--with-calibration` times them in
the same interleaved rounds as the table's calibration set instead (one call of 98 networks, before
the grid: no drift between the fit's timings and theirs, but an ONNX Runtime session per network
took this 24 GiB host to 23.6 GiB, and it did not judge better: benchmarks/README.md, "Eleventh
session").

    python benchmarks/latency_model.py     # -> benchmarks/results/latency/model-error.csv (+ .json summary)
    python benchmarks/latency_model.py --out benchmarks/results/latency/amd-model-error.csv   # another host

Run it on an idle machine: nothing else heavy beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from squish_plugin import squeezenet1_1_ancestor
from squish_plugin.deploy.backends import MachineLoad, cpu_name
from squish_plugin.deploy.latency import (
    ROUND_TO_CANDIDATES,
    calibration_networks,
    fit_whole,
    time_networks,
    with_widths,
)
from squish_plugin.study.latency import TableTimers, ensure_table, target_timers
from squish_plugin.study.recipe import load_recipe
from squish_plugin.synthesis.latency import load_table
from squish_plugin.synthesis.surgery import Surgeon, predict_ms

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ["network", "kind", "parent", "measured_ms", "predicted_ms"]


def _lineage(path: Path) -> list[dict]:
    return json.loads((path / "lineage.json").read_text())["records"]


def networks(ancestor: torch.nn.Module, seed: int, randoms: int, lattice: int) -> dict[str, tuple]:
    """``{name: (kind, parent, model)}``."""
    inputs = torch.zeros(1, 3, 224, 224)
    nets: dict[str, tuple] = {"ancestor": ("ancestor", "", ancestor)}
    for kind, folder in (("latency", "imagenette-latency"), ("params", "imagenette-seeds")):
        records = _lineage(RESULTS / folder / f"seed-{seed}")
        for r in records[1:]:
            parent = "ancestor" if r["parent"] == 0 else f"{kind}-gen{r['parent']:02d}"
            nets[f"{kind}-gen{r['generation']:02d}"] = (kind, parent, with_widths(ancestor, r["widths"], inputs))
    nets.update(_nni(ancestor, RESULTS / "imagenette-seeds" / f"seed-{seed}"))
    layers = Surgeon(ancestor, inputs).layers
    for i in range(randoms):
        rng = np.random.default_rng([1000 + seed, i])
        multiple = lattice if i % 2 == 0 else 1
        widths = {}
        for layer in layers:
            keep = max(1, round(layer.width * float(rng.uniform(0.25, 1.0))))
            widths[layer.name] = min(layer.width, multiple * math.ceil(keep / multiple))
        nets[f"random-{i:02d}"] = ("random", "", with_widths(ancestor, widths, inputs))
    return nets


def _nni(ancestor: torch.nn.Module, run: Path) -> dict[str, tuple]:
    """NNI's L1 pruner applied iteratively to the run's parameter count at every generation (the
    head-to-head's schedule; the structure its four pruners share), at generations 1..8."""
    import copy

    from squish_plugin.baselines.pruners import PruneContext, prune_to

    records = {r["generation"]: r for r in _lineage(run)}
    ctx = PruneContext(torch.zeros(1, 3, 224, 224), None, 0)
    out, model = {}, copy.deepcopy(ancestor)
    for g in range(1, 9):
        model = prune_to(model, "nni-l1", records[g]["params"], ctx)
        out[f"nni-l1-gen{g:02d}"] = ("nni", "", copy.deepcopy(model).eval())
    return out


def judged(nets: dict[str, tuple]) -> dict[str, torch.nn.Module]:
    """The networks of ``{name: (kind, parent, model)}``."""
    return {n: m for n, (_, _, m) in nets.items()}


def cotimed(timers: TableTimers, extra: dict[str, torch.nn.Module], into: dict[str, float]) -> TableTimers:
    """``timers`` whose whole-network call also times ``extra`` in the same interleaved rounds
    (named ``judged:<name>``), their times kept in ``into``; the table sees its own networks only."""

    def networks(calibration):
        both = {**calibration, **{f"judged:{n}": m for n, m in extra.items()}}
        times = timers.networks(both)
        into.update({n.removeprefix("judged:"): ms for n, ms in times.items() if n.startswith("judged:")})
        return {n: times[n] for n in calibration}

    return TableTimers(timers.layer, networks)


def error_figures(err: np.ndarray) -> dict:
    """Within 10% / within 5% and RMSPE of relative errors (predicted / measured - 1)."""
    return {
        "within_10pct": round(float(np.mean(np.abs(err) <= 0.10)), 4),
        "within_5pct": round(float(np.mean(np.abs(err) <= 0.05)), 4),
        "rmspe": round(float(np.sqrt(np.mean(err**2))), 4),
    }


def summary(rows: list[dict]) -> dict:
    err = np.array([r["predicted_ms"] / r["measured_ms"] - 1 for r in rows])
    measured = np.array([r["measured_ms"] for r in rows])
    predicted = np.array([r["predicted_ms"] for r in rows])
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    spearman = float(np.corrcoef(rank(measured), rank(predicted))[0, 1])
    by = {r["network"]: r for r in rows}
    ratios = []
    for r in rows:
        if r["kind"] == "latency":
            parent = by[r["parent"]]
            measured_ratio = r["measured_ms"] / parent["measured_ms"]
            predicted_ratio = r["predicted_ms"] / parent["predicted_ms"]
            ratios.append(predicted_ratio / measured_ratio - 1)
    kinds = {}
    for kind in sorted({r["kind"] for r in rows}):
        e = np.array([r["predicted_ms"] / r["measured_ms"] - 1 for r in rows if r["kind"] == kind])
        kinds[kind] = {"n": len(e), "min": round(float(e.min()), 4), "max": round(float(e.max()), 4)}
    return {
        "networks": len(rows),
        **error_figures(err),
        "spearman": round(spearman, 4),
        "ratio_errors_latency_generations": [round(x, 4) for x in ratios],
        "ratios_within_5pct": round(float(np.mean(np.abs(np.array(ratios)) <= 0.05)), 4) if ratios else None,
        "by_kind": kinds,
    }


def predictions(table, nets: dict[str, tuple], measured: dict[str, float]) -> list[dict]:
    rows = []
    for name, (kind, parent, model) in nets.items():
        predicted = predict_ms(model, table, torch.zeros(1, 3, 224, 224))
        rows.append({"network": name, "kind": kind, "parent": parent, "measured_ms": round(measured[name], 4),
                     "predicted_ms": round(predicted, 4)})  # fmt: skip
    return rows


def calibration_set(table, ancestor: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The calibration networks ``table`` was measured with (``round_to: auto``'s candidates among them)."""
    multiples = ROUND_TO_CANDIDATES if "round_to_figures" in table.notes else (table.round_to or 1)
    return calibration_networks(ancestor, multiples, torch.zeros(1, 3, 224, 224))


def refit(table, ancestor: torch.nn.Module, below_grid: str, keep=lambda name: True):
    """``table`` with ``below_grid`` as its rule below a grid's first width, fitted again with this
    code on its own calibration timings (the table's notes keep them), on those ``keep`` names."""
    nets = calibration_set(table, ancestor)
    measured = {name: row["measured_ms"] for name, row in table.notes["calibration"].items() if keep(name)}
    return fit_whole(replace(table, below_grid=below_grid), {n: nets[n] for n in measured}, measured)


def without_lineages(table, ancestor: torch.nn.Module, nets: dict[str, tuple], measured: dict[str, float]) -> dict:
    """``{"without_lineages": summary}``: the same timings with the table fitted on its calibration
    set less the synthesis' lineages (the set before issue #28 B added them), when it holds them."""
    if not any(n.startswith("lineage") for n in table.notes["calibration"]):
        return {}
    fitted = refit(table, ancestor, table.below_grid, keep=lambda name: not name.startswith("lineage"))
    return {"without_lineages": summary(predictions(fitted, nets, measured))}


def refit_only(args: argparse.Namespace) -> None:
    """Time nothing: the committed table fitted again on its own calibration timings with this
    code (both below-grid rules), every network predicted against the committed timings."""
    table = load_table(table_file(args.out))
    with args.out.open() as fh:
        measured = {r["network"]: float(r["measured_ms"]) for r in csv.DictReader(fh)}
    ancestor = squeezenet1_1_ancestor(10, weights=None).eval()
    nets = networks(ancestor, args.seed, args.randoms, table.round_to or 1)
    result = json.loads(args.out.with_suffix(".json").read_text())
    fitted = refit(table, ancestor, table.below_grid)
    rows = predictions(fitted, nets, measured)
    write_rows(args.out, rows)
    result.update(summary(rows), table_scale=fitted.scale, table_offset_ms=fitted.offset_ms,
                  table_off_lattice=fitted.off_lattice)  # fmt: skip
    result.update(other_rule(table, ancestor, nets, measured))
    result.update(without_lineages(table, ancestor, nets, measured))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table_file(args.out).write_text(json.dumps(fitted.to_dict(), indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if "ratio_errors" not in k}, indent=2))


def other_rule(table, ancestor: torch.nn.Module, nets: dict[str, tuple], measured: dict[str, float]) -> dict:
    """``{"with_below_grid_<the other rule>": summary}``: the other below-grid rule on the same timings."""
    other = "floor" if table.below_grid == "extrapolate" else "extrapolate"
    return {f"with_below_grid_{other}": summary(predictions(refit(table, ancestor, other), nets, measured))}


def table_file(out: Path) -> Path:
    """Where the sitting's table goes beside ``out``: ``model-table.json`` for the default
    ``model-error.csv``, ``<stem>-table.json`` for another (a sitting on another host)."""
    return out.parent / ("model-table.json" if out.name == "model-error.csv" else f"{out.stem}-table.json")


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="which seed's studies and NNI networks")
    parser.add_argument("--randoms", type=int, default=12)
    parser.add_argument("--round-to", help="the table's round_to (default: the latency-aware study's own; 'auto')")
    parser.add_argument("--table", type=Path, help="use this table instead of measuring one (not one sitting)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency" / "model-error.csv")
    parser.add_argument("--with-calibration", action="store_true", help="time the networks in the calibration "
                        "set's interleaved rounds, not after the table (~24 GiB: a session per network)")  # fmt: skip
    parser.add_argument("--calibration-rounds", type=int, help="interleaved rounds for the table's calibration "
                        "networks (default: as `bench table` times them)")  # fmt: skip
    parser.add_argument("--refit-only", action="store_true", help="time nothing: fit the committed table again "
                        "on its calibration timings with this code and predict the committed timings")  # fmt: skip
    args = parser.parse_args()
    if args.calibration_rounds is not None and args.calibration_rounds < 1:
        parser.error(f"--calibration-rounds must be an integer >= 1, got {args.calibration_rounds}.")
    if args.refit_only:
        return refit_only(args)
    torch.set_num_threads(2)
    study = RESULTS / "imagenette-latency" / f"seed-{args.seed}" / "latency_table.json"
    lattice = args.round_to or load_table(study).round_to  # the lattice the latency-aware study drew on
    started = time.perf_counter()
    ancestor = squeezenet1_1_ancestor(10, weights=None).eval()
    separate = not args.with_calibration or args.table is not None or str(lattice) == "auto"  # auto: lattice later
    nets = {} if separate else networks(ancestor, args.seed, args.randoms, int(lattice))
    measured: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, MachineLoad() as load:
        if args.table:
            table_path = args.table
        else:
            os.environ["SQUISH_CACHE"] = tmp
            recipe = load_recipe(ROOT / "examples" / "imagenette-latency.yaml", [f"evolution.round_to={lattice}"])
            timers = target_timers(recipe)
            if args.calibration_rounds:
                rounds = args.calibration_rounds
                timers = TableTimers(timers.layer, lambda n: time_networks(n, "onnxruntime", batch=32, threads=2,
                                                                           rounds=rounds))  # fmt: skip
            timers = timers if separate else cotimed(timers, judged(nets), measured)
            table_path = ensure_table(recipe, force=True, timers=timers)
        table = load_table(table_path)
        table_s = time.perf_counter() - started
        if separate:
            nets = networks(ancestor, args.seed, args.randoms, table.round_to or 1)
            measured = time_networks(judged(nets), "onnxruntime", batch=32, threads=2)
        kept = table.to_dict()
    rows = predictions(table, nets, measured)
    write_rows(args.out, rows)
    result = summary(rows)
    result.update(
        cpu=cpu_name(),
        load=load.record(),
        **{"table_seconds" if separate else "table_and_judged_seconds": round(table_s, 1)},
        total_seconds=round(time.perf_counter() - started, 1),
        table_round_to=kept["round_to"],
        table_scale=kept["scale"],
        table_offset_ms=kept["offset_ms"],
        table_off_lattice=kept["off_lattice"],
        table_below_grid=kept["below_grid"],
        timed_with_calibration=not separate,
        calibration_rounds=args.calibration_rounds,
    )
    result.update(other_rule(table, ancestor, nets, measured))
    result.update(without_lineages(table, ancestor, nets, measured))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table_file(args.out).write_text(json.dumps(kept, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "ratio_errors_latency_generations"}, indent=2))


if __name__ == "__main__":
    main()
