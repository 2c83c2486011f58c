"""CPU throughput of the ancestor, SquishedNet-1..4 and uniform NNI-style baselines of
the same sizes: ONNX Runtime and PyTorch, batch 32, 224x224, all in one process.

Run:  python benchmarks/bench_deploy.py [--run benchmarks/results/imagenette-study] [--rounds 5]

Rounds interleave the models (A B C ... A B C ...), so a machine that slows down
slows every model alike; each round times `--runs` batches after `--warmup`; the
table reports the median over all timed batches. Baselines: the uniform per-layer
ratio every NNI one-entry config_list produces (L1/L2/FPGM/Taylor differ in which
channels, not how many), built with torch-pruning at each SquishedNet's parameter
count; throughput depends on widths, not on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from squish_plugin import load_pruned, model_stats
from squish_plugin.baselines.pruners import PruneContext, prune_to
from squish_plugin.deploy.backends import bench_onnxruntime, bench_pytorch
from squish_plugin.deploy.export import export_onnx
from squish_plugin.study.engine import read_lineage
from squish_plugin.study.runner import squishednet_models

HERE = Path(__file__).resolve().parent


def models(run: Path) -> dict[str, torch.nn.Module]:
    records = {r["generation"]: r for r in read_lineage(run)}
    out = {}
    ancestor = None
    for name, gen in squishednet_models(run).items():
        out[name] = load_pruned(run / records[gen]["checkpoint"]).eval()
        if gen == 0:
            ancestor = out[name]
    ctx = PruneContext(torch.zeros(1, 3, 224, 224), None, seed=0)
    for name in [n for n in out if n != "ancestor"]:
        target = sum(p.numel() for p in out[name].parameters())
        out[f"uniform@{name}"] = prune_to(ancestor, "tp-magnitude", target, ctx).eval()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=HERE / "results" / "imagenette-study")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "deploy_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets = models(args.run)
    stats = {n: model_stats(m) for n, m in nets.items()}
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: Path(tmp) / f"{n.replace('@', '_')}.onnx" for n in nets}
        for n, m in nets.items():
            export_onnx(m, paths[n], size=224)
        for _ in range(args.rounds):
            for n, m in nets.items():
                kw = dict(name=n, batch=32, size=224, threads=args.threads, warmup=args.warmup, runs=args.runs)
                ort = bench_onnxruntime(paths[n], **kw)
                pt = bench_pytorch(m, **kw)
                for key, res in (("onnxruntime", ort), ("pytorch", pt)):
                    times.setdefault((n, key), []).append(res["latency_ms"]["median"])
    rows = []
    base = stats["ancestor"]
    for n in nets:
        row = {
            "model": n,
            "params": stats[n]["params"],
            "macs": stats[n]["macs"],
            "mac_ratio": base["macs"] / stats[n]["macs"],
        }
        for key in ("onnxruntime", "pytorch"):
            row[f"{key}_ips"] = 32 / (statistics.median(times[(n, key)]) / 1e3)
        rows.append(row)
    for row in rows:
        for key in ("onnxruntime", "pytorch"):
            row[f"{key}_speedup"] = row[f"{key}_ips"] / rows[0][f"{key}_ips"]
    env = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "rounds": args.rounds,
        "runs_per_round": args.runs,
        "batch": 32,
        "size": 224,
    }
    args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print("| model | params | MACs (M) | MAC ratio | ORT img/s | ORT speed-up | PyTorch img/s | PyTorch speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params']:,} | {r['macs'] / 1e6:.1f} | {r['mac_ratio']:.2f}x "
            f"| {r['onnxruntime_ips']:.0f} | {r['onnxruntime_speedup']:.2f}x "
            f"| {r['pytorch_ips']:.0f} | {r['pytorch_speedup']:.2f}x |"
        )


if __name__ == "__main__":
    main()
