"""Issue #25: the scratch control's learning rate, chosen on the held-out slice.

`compare`'s scratch control trains the evolutionary widths from random weights with the same
distillation and total epochs. At the finishing stage's lr (0.01, chosen for networks that
inherit trained weights), seed 0's SquishedNet-4 from random weights collapsed: held-out top-1
9.9-13.3% for 10 of its 17 epochs, the classifier's ReLU dead for 8 of 10 classes and the same
output for every image. This probe trains that network from the same random weights for a few
epochs (the finishing schedule compressed to them) at each candidate lr and records its held-out
top-1 after every epoch; the lr with the best last held-out top-1 (mean over the networks probed,
``--net SquishedNet-1 SquishedNet-4 10x`` as the baseline was chosen) becomes the control's.

    python benchmarks/scratch_lr.py    # -> benchmarks/results/finished-compare/scratch-lr.json (~6 min per lr, 2 cores)

Measured (2026-12-07, seed 0's SquishedNet-4, 4 epochs, held-out top-1 after each): lr 0.01
9.6 / 10.0 / 10.0 / 10.0; 0.003 9.8 / 15.7 / 17.7 / 19.0; 0.001 21.1 / 26.2 / 27.3 / 26.3;
0.0003 13.7 / 20.0 / 22.4 / 22.7 (``--lr 0.0003``, run after the others: the best was at the edge).
0.001 is `examples/compare-finished.yaml`'s ``scratch_lr``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from squish_plugin.persistence import load_pruned, write_json_atomic
from squish_plugin.study.engine import read_lineage, reinitialize
from squish_plugin.study.finish_run import FinishData, finish_model, finish_settings, named_networks
from squish_plugin.study.rundir import read_run_recipe
from squish_plugin.study.runner import load_data
from squish_plugin.synthesis.genetics import FINISH_STREAM, SCRATCH_STREAM, derive_seed
from squish_plugin.threads import torch_threads

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--net", nargs="+", default=["SquishedNet-4"], help="e.g. SquishedNet-1 SquishedNet-4 10x")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, nargs="+", default=[0.01, 0.003, 0.001])
    ap.add_argument("--out", type=Path, default=RESULTS / "finished-compare" / "scratch-lr.json")
    args = ap.parse_args()
    run_dir = RESULTS / "imagenette-seeds" / f"seed-{args.seed}"
    recipe = read_run_recipe(run_dir)  # with the protocol's finishing recorded (finished_protocol.sh)
    records = read_lineage(run_dir)
    sn = recipe.squishednets
    named = named_networks(records, sn.sizes_mb, sn.rule, [123500])  # 10x as compare-finished.yaml adds it
    generation = {name: gen for gen, names in named.items() for name in names}
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    console = Console()
    with torch_threads(recipe.train.threads), tempfile.TemporaryDirectory() as tmp:
        train_all, val_split = load_data(recipe)
        data = FinishData.of_run(run_dir, recipe, train_all, val_split, records)
        for net, lr in ((net, lr) for net in args.net for lr in args.lr):
            key, g = f"seed {args.seed} {net} lr {lr} epochs {args.epochs}", generation[net]
            if key in result:
                continue
            model = load_pruned(run_dir / records[g]["checkpoint"])
            reinitialize(model, derive_seed(args.seed, SCRATCH_STREAM, g))  # the control's own weights
            settings = replace(finish_settings(recipe), epochs=args.epochs, lr=lr)
            entry = finish_model(model, data, settings, seed=derive_seed(args.seed, FINISH_STREAM, g),
                                 into=Path(tmp) / f"{net}-{lr}.pt", label=key, console=console)  # fmt: skip
            result[key] = {"lr": lr, "holdout_top1": [round(h["holdout_top1"], 2) for h in entry["history"]],
                           "val_top1": round(entry["top1"], 2), "seconds": entry["train_seconds"]}  # fmt: skip
            write_json_atomic(args.out, result)
    print(json.dumps(result, indent=1))
    for lr in sorted({r["lr"] for r in result.values()}, reverse=True):  # the choice: mean over the networks probed
        last = {k.split(" lr ")[0]: r["holdout_top1"][-1] for k, r in result.items() if r["lr"] == lr}
        print(f"lr {lr}: mean last held-out top-1 {sum(last.values()) / len(last):.2f} over {sorted(last)}")


if __name__ == "__main__":
    main()
