"""Issue #28 B: a latency table measured on one x86 CPU predicting networks timed on the other
(Intel Xeon vs AMD EPYC), both ONNX Runtime 1.32 CPU EP, fp32, batch 32, 224 px, 2 threads.
Times nothing: it reads committed tables and timings.

- Xeon table -> EPYC timings: `results/latency/model-table.json` (the Xeon table of
  `latency_model.py`) predicts every network `speed_table.py` timed on the EPYC host
  (`results/speed/amd-seed-{0,1,2}.json`: the ancestor and SquishedNet-1..4 of the parameter-budget
  and latency-aware studies, 3 seeds; NNI's rows are left out: their pruner differs per row).
- EPYC table -> Xeon timings: `results/latency/onnxruntime-cpu-amd-epyc-t2-b32.json` predicts the
  51 networks `latency_model.py` timed on the Xeon (`results/latency/model-error.csv`).
- The EPYC sitting (2026-12-07): `latency_model.py --out .../amd-model-error.csv` timed a table
  (calibrated with the synthesis' lineages) and the same 51 networks on an EPYC host
  (`results/latency/amd-model-error-table.json`, `amd-model-error.csv`); each host's table predicts
  the other host's 51 timings.
- Beside each: the same table on its own host, and the ratio to the ancestor (what "keep env of
  the parent's latency" relies on), predicted against measured.

    python benchmarks/latency_cross_host.py    # -> benchmarks/results/latency/cross-host.json
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_model import error_figures, networks  # noqa: E402
from squish_plugin import squeezenet1_1_ancestor  # noqa: E402
from squish_plugin.deploy.latency import with_widths  # noqa: E402
from squish_plugin.synthesis.latency import load_table  # noqa: E402
from squish_plugin.synthesis.surgery import predict_ms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAT = ROOT / "benchmarks" / "results" / "latency"
INPUTS = torch.zeros(1, 3, 224, 224)


def figures(pairs: list[tuple[str, float, float]]) -> dict:
    """``pairs``: (network, measured, predicted); the ancestor's row gives the ratios."""
    err = np.array([p / m - 1 for _, m, p in pairs])
    ancestors = {n.split("/")[0]: (m, p) for n, m, p in pairs if n.endswith("ancestor")}
    ratio = np.array(
        [
            (p / ancestors[n.split("/")[0]][1]) / (m / ancestors[n.split("/")[0]][0]) - 1
            for n, m, p in pairs
            if not n.endswith("ancestor")
        ]  # fmt: skip
    )
    return {
        "networks": len(pairs),
        **error_figures(err),
        "bias": round(float(np.median(err)), 4),
        "ratio_to_ancestor_within_5pct": round(float(np.mean(np.abs(ratio) <= 0.05)), 4),
        "ratio_to_ancestor_within_10pct": round(float(np.mean(np.abs(ratio) <= 0.10)), 4),
        "ratio_rmspe": round(float(np.sqrt(np.mean(ratio**2))), 4),
    }


def epyc_networks(ancestor: torch.nn.Module) -> list[tuple[str, float, torch.nn.Module]]:
    out = []
    for seed in range(3):
        data = json.loads((ROOT / "benchmarks" / "results" / "speed" / f"amd-seed-{seed}.json").read_text())
        runs = dict(a.split("=", 1) for a in data["args"]["run"])
        for row in data["rows"]:
            kind = row["network"].split()[0]
            if row["network"] == "ancestor":
                out.append((f"seed{seed}/ancestor", row["measured_ms"], ancestor))
            elif kind in runs:
                lineage = json.loads((ROOT / runs[kind] / "lineage.json").read_text())["records"]
                widths = {r["generation"]: r["widths"] for r in lineage}[row["generation"]]
                out.append((f"seed{seed}/{row['network']}", row["measured_ms"], with_widths(ancestor, widths, INPUTS)))
    return out


def _timings(name: str) -> dict[str, float]:
    with (LAT / name).open() as fh:
        return {r["network"]: float(r["measured_ms"]) for r in csv.DictReader(fh)}


def main() -> None:
    torch.set_num_threads(2)
    ancestor = squeezenet1_1_ancestor(10, weights=None).eval()
    xeon, epyc = load_table(LAT / "model-table.json"), load_table(LAT / "onnxruntime-cpu-amd-epyc-t2-b32.json")
    on_epyc = epyc_networks(ancestor)
    sitting = load_table(LAT / "amd-model-error-table.json")  # the EPYC sitting, the current method
    fifty_one = networks(ancestor, 0, 12, 16)
    xeon_ms, epyc_ms = _timings("model-error.csv"), _timings("amd-model-error.csv")
    on_xeon = [(f"xeon/{n}", xeon_ms[n], model) for n, (_, _, model) in fifty_one.items()]
    on_epyc51 = [(f"epyc/{n}", epyc_ms[n], model) for n, (_, _, model) in fifty_one.items()]
    result = {"xeon_table": xeon.target.get("device"), "epyc_table": epyc.target.get("device")}
    for label, table, nets in (
        ("xeon_table_on_epyc_timings", xeon, on_epyc),
        ("epyc_table_on_epyc_timings", epyc, on_epyc),
        ("epyc_table_on_xeon_timings", epyc, on_xeon),
        ("xeon_table_on_xeon_timings", xeon, on_xeon),
        ("xeon_table_on_epyc_sitting", xeon, on_epyc51),
        ("epyc_sitting_table_on_epyc_sitting", sitting, on_epyc51),
        ("epyc_sitting_table_on_xeon_timings", sitting, on_xeon),
    ):
        pairs = [(n, m, predict_ms(model, table, INPUTS)) for n, m, model in nets]
        result[label] = figures(pairs)
        print(label, json.dumps(result[label]), flush=True)
    (LAT / "cross-host.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
