"""Issue #27: do the parameter budget's odd widths make a "smaller" network slower than its
parent, and does rounding kept widths up to a multiple (``evolution.round_to``) stop it?

For each seed of the committed three-seed study (examples/imagenette.yaml, no rounding), every
SquishedNet's structure as drawn and with every width rounded up to 8 and to 16 (the first
channels kept: speed depends on the structure, not on the weights), timed with the ancestor
on ONNX Runtime's CPU EP (fp32, batch 32, 224 px, 2 threads) in interleaved rounds, all
networks of a seed in one process. Speed-ups are against the ancestor of the same run. Run
it on an idle machine (nothing else heavy beside it).

    python benchmarks/width_alignment.py    # -> benchmarks/results/width_alignment.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
from pathlib import Path

import torch

from squish_plugin.deploy.backends import MachineLoad, bench_interleaved
from squish_plugin.deploy.export import export_onnx
from squish_plugin.deploy.latency import with_widths
from squish_plugin.persistence import load_pruned
from squish_plugin.study.engine import read_lineage
from squish_plugin.study.runner import squishednet_models
from squish_plugin.synthesis.surgery import model_stats

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "benchmarks" / "results" / "imagenette-seeds"
COLUMNS = ["seed", "net", "round_to", "params", "macs", "images_per_s", "speedup", "mac_ratio", "cpu", "load"]


def _networks(run: Path, multiples: list[int]) -> dict[tuple[str, int], torch.nn.Module]:
    ancestor = load_pruned(run / "checkpoints" / "gen_00.pt").eval()
    records = {r["generation"]: r for r in read_lineage(run)}
    nets = {("ancestor", 1): ancestor}
    for name, gen in squishednet_models(run).items():
        if name == "ancestor":
            continue
        widths = records[gen]["widths"]
        for m in multiples:
            rounded = {k: min(m * math.ceil(w / m), _full(ancestor, k)) for k, w in widths.items()}
            nets[(name.replace("squishednet", "SquishedNet"), m)] = with_widths(ancestor, rounded).eval()
    return nets


def _full(model: torch.nn.Module, name: str) -> int:
    return dict(model.named_modules())[name].weight.shape[0]


def measure(seed: int, args: argparse.Namespace) -> list[dict[str, object]]:
    nets = _networks(SEEDS / f"seed-{seed}", args.round_to)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (key, net) in enumerate(nets.items()):
            paths[key] = Path(tmp) / f"{i}.onnx"
            export_onnx(net, paths[key], batch=32)
        with MachineLoad() as load:
            results = bench_interleaved(
                {f"{k[0]}@{k[1]}": p for k, p in paths.items()},
                backend="onnxruntime",
                batch=32,
                threads=2,
                rounds=args.rounds,
                runs=args.runs,
            )
    speed = {r["model"]: r["images_per_second"] for r in results}
    cpu, machine = results[0]["env"]["device"], load.record()
    base_speed, base = speed["ancestor@1"], model_stats(nets[("ancestor", 1)])
    rows = []
    for (name, m), net in nets.items():
        stats = model_stats(net)
        ips = speed[f"{name}@{m}"]
        rows.append(
            {
                "seed": seed,
                "net": name,
                "round_to": m,
                "params": int(stats["params"]),
                "macs": int(stats["macs"]),
                "images_per_s": round(ips, 1),
                "speedup": round(ips / base_speed, 3),
                "mac_ratio": round(base["macs"] / stats["macs"], 3),
                "cpu": cpu,
                "load": machine.get("other_processes_cores", ""),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "width_alignment.csv")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [row for seed in args.seeds for row in measure(seed, args)]
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(", ".join(f"{k} {row[k]}" for k in COLUMNS[:8]))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
