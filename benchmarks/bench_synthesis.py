"""Time of one synthesis step on the SqueezeNet-10 ancestor, graph build included.

Run:  python benchmarks/bench_synthesis.py [--repeats 5] [--threads 2]
Prints a Markdown table; the committed one is in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

from squish_plugin import EvolutionarySynthesisPruner, squeezenet1_1_ancestor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ancestor = squeezenet1_1_ancestor(num_classes=10, weights="imagenet")
    rows = {"construct (trace + clusters)": [], "step() (sample + prune + retrace)": [], "total": []}
    for seed in range(args.repeats):
        model = copy.deepcopy(ancestor)
        t0 = time.perf_counter()
        pruner = EvolutionarySynthesisPruner(model, env=0.9, seed=seed)
        t1 = time.perf_counter()
        pruner.step()
        t2 = time.perf_counter()
        rows["construct (trace + clusters)"].append(t1 - t0)
        rows["step() (sample + prune + retrace)"].append(t2 - t1)
        rows["total"].append(t2 - t0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, {args.repeats} repeats"
    )
    print("| phase | median s | min s | max s |\n|---|---:|---:|---:|")
    for name, times in rows.items():
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")


if __name__ == "__main__":
    main()
