"""How well a latency table predicts whole networks (issue #16's "within 10%"): for the
ancestor and SquishedNets of each run, the table's prediction against the whole network
timed on the table's backend (interleaved rounds, median ms per batch).

Run on an idle machine:
    python benchmarks/latency_model.py TABLE RUN_DIR [RUN_DIR ...] [--rounds 3] [--out FILE.json]

Prints a Markdown table (run, model, generation, params, MACs, predicted ms, measured ms,
error) and, with --out, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from squish_plugin.deploy.backends import bench_interleaved
from squish_plugin.deploy.export import export_onnx
from squish_plugin.persistence import load_pruned, write_json_atomic
from squish_plugin.study.engine import read_lineage
from squish_plugin.study.runner import squishednet_models
from squish_plugin.synthesis.latency import load_table
from squish_plugin.synthesis.surgery import model_stats, predict_ms


def _measured_ms(nets: dict, table, rounds: int, runs: int) -> dict:
    """Median ms per batch of every network, in the harness of ``bench`` and
    ``speed_table.py`` (interleaved rounds; ONNX Runtime: exported first)."""
    target = table.target
    batch, threads, size = target["batch"], target["threads"], target.get("input_size", 224)
    names = {key: f"net{i}" for i, key in enumerate(nets)}
    with tempfile.TemporaryDirectory() as tmp:
        if target["backend"] == "pytorch":
            targets = {names[k]: net for k, net in nets.items()}
        else:
            targets = {}
            for key, net in nets.items():
                targets[names[key]] = Path(tmp) / f"{names[key]}.onnx"
                export_onnx(net, targets[names[key]], batch=batch, size=size)
        results = bench_interleaved(
            targets, backend=target["backend"], batch=batch, size=size, threads=threads, rounds=rounds, runs=runs
        )
    by_name = {r["model"]: r["latency_ms"]["median"] for r in results}
    return {key: by_name[names[key]] for key in nets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs-per-round", type=int, default=6)
    parser.add_argument("--out")
    args = parser.parse_args()
    table = load_table(args.table)
    torch.set_num_threads(table.target.get("threads", 2))
    nets, meta = {}, {}
    for run in args.runs:
        records = {r["generation"]: r for r in read_lineage(Path(run))}
        for name, gen in squishednet_models(Path(run)).items():
            net = load_pruned(Path(run) / records[gen]["checkpoint"]).eval()
            nets[(run, name)] = net
            meta[(run, name)] = {"generation": gen, **model_stats(net)}
    load = os.getloadavg()[0]
    measured = _measured_ms(nets, table, args.rounds, args.runs_per_round)
    rows = []
    print(f"load before timing: {load:.2f} on {os.cpu_count()} cores; table: {args.table}")
    print("| run | model | gen | params | MACs (M) | predicted ms | measured ms | error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key, net in nets.items():
        predicted = predict_ms(net, table, torch.zeros(1, 3, 224, 224))
        row = {"run": key[0], "model": key[1], **meta[key], "predicted_ms": predicted, "measured_ms": measured[key]}
        row["error"] = predicted / measured[key] - 1
        rows.append(row)
        print(
            f"| {Path(key[0]).name} | {key[1]} | {row['generation']} | {row['params']:,} | {row['macs'] / 1e6:.1f} "
            f"| {predicted:.1f} | {measured[key]:.1f} | {row['error']:+.1%} |"
        )
    if args.out:
        write_json_atomic(args.out, {"table": args.table, "load": load, "rows": rows})


if __name__ == "__main__":
    main()
