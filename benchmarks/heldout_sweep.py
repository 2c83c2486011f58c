"""One change at a time, judged on the held-out slice: run the variants of a sweep file
(a base recipe plus ``--set`` overrides per variant), each into ``<out>/<variant>``,
resuming a run that was cut short, and print held-out (the choice) and val (reported
only) top-1 per generation.

Run:  python benchmarks/heldout_sweep.py benchmarks/sweeps/lr.yaml [--only NAME ...] [--table]

A sweep file::

    recipe: examples/imagenette.yaml
    out: benchmarks/results/heldout-sweeps/lr
    common: ["data.holdout=0.1", "evolution.generations=3"]
    variants:
      lr-0.01: ["train.lr=0.01"]
      lr-0.003: ["train.lr=0.003"]

``--table`` only prints the table of the runs already there (also while others run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from rich.console import Console

from squish_plugin.study.engine import LINEAGE_FILE, read_lineage
from squish_plugin.study.recipe import load_recipe
from squish_plugin.study.runner import run_study
from squish_plugin.study.selection import ANCESTOR_FILE


def run_variant(spec: dict, name: str, overrides: list[str]) -> None:
    recipe = load_recipe(spec["recipe"], list(spec.get("common", [])) + list(overrides))
    run_dir = Path(spec["out"]) / name
    resume = (run_dir / LINEAGE_FILE).is_file()
    if resume and len(read_lineage(run_dir)) == recipe.evolution.generations + 1:
        return
    run_study(recipe, run_dir=run_dir, resume=resume, console=Console())


def table(spec: dict) -> str:
    lines = ["| variant | gen | params | held-out top-1 | val top-1 | ancestor kept |", "|---|---:|---:|---:|---:|---|"]
    for name in spec["variants"]:
        run_dir = Path(spec["out"]) / name
        if not (run_dir / LINEAGE_FILE).is_file():
            lines.append(f"| {name} | — | — | — | — | not run |")
            continue
        anc = run_dir / ANCESTOR_FILE
        kept = json.loads(anc.read_text())["kept"] if anc.is_file() else "—"
        for r in read_lineage(run_dir):
            held = r.get("holdout_top1")
            held = f"{held:.2f}" if held is not None else "—"
            lines.append(f"| {name} | {r['generation']} | {r['params']:,} | {held} | {r['top1']:.2f} | {kept} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    spec = yaml.safe_load(args.sweep.read_text())
    if not args.table:
        for name, overrides in spec["variants"].items():
            if args.only is None or name in args.only:
                run_variant(spec, name, overrides)
    print(table(spec))


if __name__ == "__main__":
    main()
