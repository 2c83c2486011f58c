"""The README's main job, measured as a newcomer meets it (issue #27): the quickstart recipe
run with the CLI for seeds 0, 1 and 2; per seed the ancestor's top-1, the last generation's,
the drop between them, the training seconds the lineage records and the command's wall time.

Goal: the last generation within 5 points of its ancestor (mean of the 3 seeds) in no more
time than the quickstart took before the measured defaults. Run it on an idle machine (the
wall times are the point): nothing else heavy beside it.

    python benchmarks/quickstart_goal.py                                # -> benchmarks/results/quickstart.csv
    python benchmarks/quickstart_goal.py --set train.distill.teacher=none --out /tmp/q.csv  # a variant
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "quickstart.yaml"
COLUMNS = [
    "version", "seed", "ancestor_top1", "last_generation", "last_top1", "drop",
    "ancestor_holdout", "last_holdout", "last_params", "train_s", "wall_s",
]  # fmt: skip


def run_seed(seed: int, sets: list[str], work: Path, recipe: Path = RECIPE) -> dict[str, object]:
    """One quickstart run through the CLI; its figures from the lineage it wrote."""
    out = work / f"seed-{seed}-{recipe.parent.parent.name}"
    cmd = [sys.executable, "-m", "squish_plugin", "run", str(recipe), "--set", f"seed={seed}"]
    cmd += ["--set", f"output.dir={out}"] + [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    (run_dir,) = out.iterdir()
    records = json.loads((run_dir / "lineage.json").read_text())["records"]
    first, last = records[0], records[-1]
    return {
        "seed": seed,
        "ancestor_top1": first["top1"],
        "last_generation": last["generation"],
        "last_top1": last["top1"],
        "drop": round(first["top1"] - last["top1"], 3),
        "ancestor_holdout": first.get("holdout_top1", ""),
        "last_holdout": last.get("holdout_top1", ""),
        "last_params": last["params"],
        "train_s": round(sum(r.get("train_seconds", 0.0) for r in records), 1),
        "wall_s": round(wall, 1),
    }


def _before(seed: int, checkout: Path, work: Path) -> dict[str, object]:
    """The quickstart of ``checkout`` run with that checkout's own package."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(checkout / "src") + (os.pathsep + old if old else "")
    try:
        return run_seed(seed, [], work, checkout / "examples" / "quickstart.yaml")
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="a recipe override for every seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quickstart.csv")
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout of the code before (e.g. a git worktree): its quickstart is run with its own code, "
        "interleaved seed by seed with this one, so the wall times compare within one sitting",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for seed in args.seeds:
            if args.before:
                rows.append({"version": "before", **_before(seed, args.before, Path(tmp))})
            rows.append({"version": "after" if args.before else "", **run_seed(seed, args.set, Path(tmp))})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(", ".join(f"{k} {row[k]}" for k in COLUMNS))
    for version in sorted({r["version"] for r in rows}):
        mine = [r for r in rows if r["version"] == version]
        for key in ("ancestor_top1", "last_top1", "drop", "ancestor_holdout", "last_holdout", "wall_s"):
            values = [float(r[key]) for r in mine if r[key] != ""]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                print(f"{version or 'quickstart'} {key}: {statistics.mean(values):.2f} +- {sd:.2f}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
