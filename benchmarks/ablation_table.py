"""The ablation table of the published study: one row per run directory, top-1 at the
first generation at or below each SquishedNet size (2.4 / 2.0 / 1.3 / 0.95 MB) and at
<= 123,500 parameters (10x fewer than SqueezeNet v1.1), with that generation's number and
the epochs it had trained after the ancestor; "—" where a run never got that small.

Run:  python benchmarks/ablation_table.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--copy-to DIR]

``--copy-to`` keeps each run's small files (recipe, lineage, report, plots; no
checkpoints) under ``DIR/<run folder name>/``, so the table can be remade from the commit.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from squish_plugin.study.engine import read_lineage
from squish_plugin.study.report import SQUISHEDNET_SIZES_MB, select_squishednets
from squish_plugin.study.runner import read_run_recipe

TEN_X = 123_500
KEEP = ("recipe.yaml", "lineage.json", "report.md", "generations.csv", "top1_vs_size.png", "widths.png")


def row(label: str, run: Path) -> str:
    records = read_lineage(run)
    t = read_run_recipe(run).train
    named = select_squishednets(records, SQUISHEDNET_SIZES_MB, "first_below")
    gens = [n["generation"] for n in named]
    gens.append(next((r["generation"] for r in records if r["generation"] > 0 and r["params"] <= TEN_X), None))
    by_gen = {r["generation"]: r for r in records}
    cells = []
    for g in gens:
        if g is None:
            cells.append("—")
            continue
        r = by_gen[g]
        cells.append(f"{r['top1']:.1f} (g{g}, {r['params'] / 1e3:.0f}k, {g * t.epochs_per_generation:g} ep)")
    last = records[-1]
    cells.append(f"{last['top1']:.1f} ({last['params'] / 1e3:.0f}k)")
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    ap.add_argument("--copy-to", type=Path)
    args = ap.parse_args()
    print(
        "| run | SquishedNet-1 (<=2.4 MB) | SquishedNet-2 (<=2.0 MB) | SquishedNet-3 (<=1.3 MB) "
        "| SquishedNet-4 (<=0.95 MB) | 10x (<=123.5k) | last generation |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for item in args.runs:
        label, _, path = item.partition("=")
        run = Path(path)
        print(row(label, run))
        if args.copy_to:
            dest = args.copy_to / run.name
            dest.mkdir(parents=True, exist_ok=True)
            for name in KEEP:
                if (run / name).is_file():
                    shutil.copy2(run / name, dest / name)


if __name__ == "__main__":
    main()
