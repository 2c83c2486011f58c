"""Issue #28 B: how far the latency model's figures are the model's and how far the sitting's.

Reads the committed sittings of `benchmarks/latency_model.py` on one host (`--prefix`, default
`amd-model-error`: every `<prefix>*.csv` beside its `.json` and `-table.json`) and times nothing:

- **timings**: the same 51 networks' measured ms in two sittings, the second scaled by the one
  factor that fits it best (the geometric mean of the ratios): how well a perfect model of one
  sitting, right up to the host's speed, would predict another (within 10%, within 5%, RMSPE);
- **swap**: every sitting's grid (its per-layer times) fitted on every sitting's calibration
  timings and judged on that sitting's 51 networks: whether the grid or the whole-network timings
  decide a sitting's figures.

    python benchmarks/latency_sittings.py    # -> benchmarks/results/latency/amd-sittings.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_model as lm  # noqa: E402
from squish_plugin import squeezenet1_1_ancestor  # noqa: E402
from squish_plugin.deploy.latency.calibration import fit_splits, layer_splits  # noqa: E402
from squish_plugin.synthesis.latency import load_table  # noqa: E402

LAT = Path(__file__).resolve().parent / "results" / "latency"


def sittings(prefix: str) -> dict[str, Path]:
    """``{short name: csv}`` of the committed sittings with ``prefix`` (a table beside each)."""
    found = {p.stem.removeprefix(prefix).lstrip("-") or "1": p for p in LAT.glob(f"{prefix}*.csv")}
    return {k: found[k] for k in sorted(found, key=lambda k: (not k.isdigit(), k)) if lm.table_file(found[k]).is_file()}


def measured(path: Path) -> dict[str, float]:
    with path.open() as fh:
        return {r["network"]: float(r["measured_ms"]) for r in csv.DictReader(fh)}


def timings_agreement(a: dict[str, float], b: dict[str, float]) -> dict:
    """``b`` predicting ``a`` network by network after one best scale."""
    names = sorted(a)
    ratio = np.array([a[n] / b[n] for n in names])
    return lm.error_figures(ratio / np.exp(np.mean(np.log(ratio))) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="amd-model-error")
    parser.add_argument("--out", type=Path, default=LAT / "amd-sittings.json")
    args = parser.parse_args()
    found = sittings(args.prefix)
    times = {k: measured(p) for k, p in found.items()}
    tables = {k: load_table(lm.table_file(p)) for k, p in found.items()}
    ancestor = squeezenet1_1_ancestor(10, weights=None).eval()
    nets = lm.networks(ancestor, 0, 12, 16)
    result: dict = {"sittings": {k: str(p.relative_to(LAT.parents[2])) for k, p in found.items()}}
    result["timings"] = {a: {b: timings_agreement(times[a], times[b]) for b in found if b != a} for a in found}
    calibration = {k: {n: row["measured_ms"] for n, row in t.notes["calibration"].items()} for k, t in tables.items()}
    swap: dict = {}
    for grid in found:  # a grid's layer sums once, fitted on every sitting's calibration timings
        cal = lm.calibration_set(tables[grid], ancestor)
        splits = layer_splits(tables[grid], {n: cal[n] for n in set().union(*calibration.values())})
        swap[grid] = {}
        for timed in found:
            fitted = fit_splits(tables[grid], {n: splits[n] for n in calibration[timed]}, calibration[timed])
            summary = lm.summary(lm.predictions(fitted, nets, times[timed]))
            swap[grid][timed] = {k: summary[k] for k in ("within_10pct", "within_5pct", "rmspe")}
    result["swap"] = swap
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    cell = lambda f: f"{f['within_10pct']:.0%} / {f['within_5pct']:.0%} / {f['rmspe']:.1%}"  # noqa: E731
    print("Timings of (row) predicted by those of (column) after one scale (within 10% / within 5% / RMSPE):\n")
    print("| | " + " | ".join(found) + " |\n|---|" + "---:|" * len(found))
    for a in found:
        print(f"| {a} | " + " | ".join("-" if a == b else cell(result["timings"][a][b]) for b in found) + " |")
    print("\nThe grid of (row) fitted on the calibration timings of (column) and judged against that sitting's 51:\n")
    print("| | " + " | ".join(found) + " |\n|---|" + "---:|" * len(found))
    for g in found:
        print(f"| {g} | " + " | ".join(cell(swap[g][t]) for t in found) + " |")


if __name__ == "__main__":
    main()
