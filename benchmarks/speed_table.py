"""Issue #16's speed table: params, MACs, images/s, speed-up and MAC ratio (both against the
ancestor) and val top-1 of the ancestor and SquishedNets of each run, and of the baselines of
a comparison at the same sizes (their networks rebuilt from the widths `compare` records: speed
depends on the structure, not on the weights; so is a run's generation whose checkpoint was
not kept, from its lineage's widths). ONNX Runtime CPU EP, fp32, interleaved rounds,
every network in one process; the CPU and the machine's load are recorded (measure on an
idle machine, and compare figures from the same CPU only). With ``--latency-table``, each
network's predicted ms per batch on that table and its error against the measured ms
(issue #16's "within 10%"), from the same timings.

Run:
    python benchmarks/speed_table.py --run NAME=RUN_DIR [--run ...] [--compare RESULTS_JSON --seed 0]
        [--baseline LABEL=RUN_DIR] [--latency-table TABLE] [--batch 32 --threads 2 --rounds 5 --runs 6]
        [--out FILE_STEM]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

from squish_plugin.deploy.backends import MachineLoad, bench_interleaved
from squish_plugin.deploy.export import export_onnx
from squish_plugin.deploy.latency import with_widths
from squish_plugin.persistence import atomic_write_text, load_pruned, write_json_atomic
from squish_plugin.study.engine import read_lineage
from squish_plugin.study.runner import squishednet_models
from squish_plugin.synthesis.latency import load_table
from squish_plugin.synthesis.surgery import model_stats, predict_ms


def _replayed(label: str, run: Path, ancestor: torch.nn.Module, meta: dict) -> dict:
    """NNI L1 pruned iteratively to the run's parameters at every generation, untrained: the
    structure all four NNI baselines share (a uniform ratio per layer; their params agree to
    the channel), at the run's SquishedNet generations; top-1 (the best +kd pruner's) from
    ``--compare`` if given."""
    from squish_plugin.baselines.pruners import PruneContext, prune_to

    records = {r["generation"]: r for r in read_lineage(run)}
    named = {g: n for n, g in squishednet_models(run).items() if n != "ancestor"}
    ctx = PruneContext(torch.zeros(1, 3, 224, 224), None, 0)
    out, model = {}, ancestor
    for g in range(1, max(named) + 1):
        model = prune_to(model, "nni-l1", records[g]["params"], ctx)
        if g in named:
            key = f"{label} {named[g]}"
            out[key] = copy.deepcopy(model).eval()
            meta[key] = {"generation": g, "top1": float("nan")}
    return out


def _best_kd(rows: dict, seed: int, squishednet: str) -> dict:
    """The best ``+kd`` baseline's top-1 at ``squishednet`` on ``seed`` in a comparison's rows."""
    found = [
        (r["top1"], method.partition("@")[0])
        for method, results in sorted(rows.items())
        if method.endswith(f"+kd@{seed}")
        for r in results
        if r["squishednet"].lower() == squishednet
    ]
    if not found:
        return {}
    top1, best = max(found)
    return {"top1": top1, "best": best}


def networks(args) -> tuple[dict, dict]:
    nets, meta = {}, {}
    ancestor = None
    for spec in args.run:
        label, run = spec.split("=", 1)
        records = {r["generation"]: r for r in read_lineage(Path(run))}
        for name, gen in squishednet_models(Path(run)).items():
            path = Path(run) / records[gen]["checkpoint"]
            if path.is_file():
                net = load_pruned(path).eval()
            else:  # a checkpoint not kept: the structure from the widths the lineage records
                net = with_widths(ancestor, records[gen]["widths"]).eval()
            ancestor = ancestor or (net if name == "ancestor" else None)
            key = "ancestor" if name == "ancestor" else f"{label} {name}"
            if key in nets:
                continue
            nets[key] = net
            meta[key] = {"generation": gen, "top1": records[gen]["top1"]}
    rows = json.loads(Path(args.compare).read_text()) if args.compare else {}
    for spec in args.baseline or []:
        label, run = spec.split("=", 1)
        replayed = _replayed(label, Path(run), nets["ancestor"], meta)
        nets.update(replayed)
        for key in replayed:  # the structure's top-1: the best +kd pruner's at that size and seed
            meta[key].update(_best_kd(rows, args.seed, key.split(" ", 1)[1]))
    if args.compare and not args.baseline:  # each baseline's own widths (with --baseline: its top-1 only)
        for method, found in sorted(rows.items()):
            name, _, seed = method.partition("@")
            if int(seed) != args.seed or name == "evolutionary":
                continue
            for r in found:
                if "widths" in r and r["squishednet"].startswith("SquishedNet"):
                    key = f"{name} {r['squishednet'].lower()}"
                    nets[key] = with_widths(ancestor, r["widths"]).eval()
                    meta[key] = {"generation": r["generation"], "top1": r["top1"]}
    return nets, meta


def _best(meta: dict) -> str:
    return f" ({meta['best']})" if "best" in meta else ""


def _pct(value: float) -> str:
    return "—" if value != value else f"{value:.2f}"  # NaN: a structure timed without its weights


def _measure(nets: dict, args) -> tuple[dict, dict]:
    """Images/s of every network (interleaved rounds, one process) and the run's environment."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (key, net) in enumerate(nets.items()):
            paths[key] = Path(tmp) / f"{i}.onnx"
            export_onnx(net, paths[key], batch=args.batch)
        with MachineLoad() as load:
            results = bench_interleaved(
                paths, backend="onnxruntime", batch=args.batch, threads=args.threads, rounds=args.rounds, runs=args.runs
            )
    env = {"cpu": results[0]["env"]["device"], "onnxruntime": results[0]["env"]["onnxruntime"], "load": load.record()}
    return {r["model"]: r["images_per_second"] for r in results}, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR")
    parser.add_argument("--compare", help="a comparison's results.json: baseline widths, or with --baseline top-1s")
    parser.add_argument("--baseline", action="append", help="LABEL=RUN_DIR: NNI's structure on that run's schedule")
    parser.add_argument("--latency-table", help="a latency table: add its predicted ms and error per network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets, meta = networks(args)
    table = load_table(args.latency_table) if args.latency_table else None
    if table and int(table.target.get("batch", args.batch)) != args.batch:
        parser.error(f"the latency table was measured at batch {table.target['batch']}, not {args.batch}.")
    speed, env = _measure(nets, args)
    base = model_stats(nets["ancestor"])["macs"]
    extra = " predicted ms | measured ms | error |" if table else ""
    lines = [
        f"ONNX Runtime {env['onnxruntime']} CPU EP on {env['cpu']}, fp32, batch {args.batch}, {args.threads} threads, "
        f"{args.rounds} interleaved rounds x {args.runs} batches; machine load: {env['load']}"
        + (f"; latency table: {args.latency_table}" if table else ""),
        "",
        "| network | gen | params | MACs (M) | images/s | speed-up | MAC ratio | speed-up / MAC ratio | top-1 (%) |"
        + extra,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if table else ""),
    ]
    rows = []
    for key, net in nets.items():
        stats = model_stats(net)
        up, ratio = speed[key] / speed["ancestor"], base / stats["macs"]
        row = {"network": key, **meta[key], **stats, "images_per_second": speed[key], "speed_up": up}
        line = (
            f"| {key} | {meta[key]['generation']} | {stats['params']:,} | {stats['macs'] / 1e6:.1f} | {speed[key]:.0f} "
            f"| {up:.2f} | {ratio:.2f} | {up / ratio:.2f} | {_pct(meta[key]['top1'])}{_best(meta[key])} |"
        )
        if table:
            row["measured_ms"] = 1000.0 * args.batch / speed[key]
            row["predicted_ms"] = predict_ms(net, table)
            row["error"] = row["predicted_ms"] / row["measured_ms"] - 1
            line += f" {row['predicted_ms']:.1f} | {row['measured_ms']:.1f} | {row['error']:+.1%} |"
        rows.append(row)
        lines.append(line)
    print("\n".join(lines))
    if args.out:
        write_json_atomic(f"{args.out}.json", {**env, "rows": rows, "args": vars(args)})
        atomic_write_text(f"{args.out}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
