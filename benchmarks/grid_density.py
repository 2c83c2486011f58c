"""Does a denser latency grid predict whole networks better? Measures latency tables of the
ancestor at several grid densities (ONNX Runtime CPU EP, the 16-lattice), then times, in
ONE interleaved run, the 17 calibration networks and the test networks (every seed's
SquishedNets of the parameter-budget and latency-aware studies, rebuilt from their widths),
fits each table on the calibration networks alone, and reports each table's error on the
test networks: absolute, and relative to the ancestor (the synthesis only uses ratios of
latencies, so a machine that is uniformly faster or slower does not move that one).

Run:
    python benchmarks/grid_density.py [--points 8 16] [--seeds 0 1 2] [--out FILE_STEM]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from squish_plugin import squeezenet1_1_ancestor
from squish_plugin.deploy.backends import MachineLoad, cpu_name
from squish_plugin.deploy.latency import calibration_networks, measure_table, time_networks, with_widths
from squish_plugin.deploy.latency.calibration import fit_whole
from squish_plugin.deploy.latency.timers import onnxruntime_layer_timer
from squish_plugin.persistence import atomic_write_text, write_json_atomic
from squish_plugin.study.engine import read_lineage
from squish_plugin.study.runner import squishednet_models
from squish_plugin.synthesis.surgery import predict_ms

STUDIES = {"params": "benchmarks/results/imagenette-seeds", "latency": "benchmarks/results/imagenette-latency"}


def test_networks(ancestor: torch.nn.Module, seeds: list[int]) -> dict[str, torch.nn.Module]:
    nets = {}
    for seed in seeds:
        for label, root in STUDIES.items():
            run = Path(root) / f"seed-{seed}"
            records = {r["generation"]: r for r in read_lineage(run)}
            for name, gen in squishednet_models(run).items():
                if name != "ancestor":
                    nets[f"{seed} {label} {name}"] = with_widths(ancestor, records[gen]["widths"])
    return nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--round-to", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inputs = torch.zeros(1, 3, 224, 224)
    ancestor = squeezenet1_1_ancestor(num_classes=10, weights=None).eval()
    timer = onnxruntime_layer_timer(batch=args.batch, threads=args.threads)
    tables, seconds = {}, {}
    for points in args.points:
        start = time.perf_counter()
        tables[points] = measure_table(
            ancestor, timer, example_inputs=inputs, step=args.round_to, points=points, round_to=args.round_to
        )
        seconds[points] = round(time.perf_counter() - start, 1)
        print(
            f"{points} points: {tables[points].notes['timed_layers']} layer timings in {seconds[points]} s", flush=True
        )
    calib = calibration_networks(ancestor, args.round_to, inputs)
    tests = {"ancestor": ancestor, **test_networks(ancestor, args.seeds)}
    with MachineLoad() as load:
        measured = time_networks(
            {**{f"calib {k}": v for k, v in calib.items()}, **tests},
            "onnxruntime",
            batch=args.batch,
            threads=args.threads,
        )
    lines = [f"{cpu_name()}, ONNX Runtime CPU EP, batch {args.batch}, {args.threads} threads; load {load.record()}", ""]
    head = "| points | layer timings | s | fit: scale, off-lattice, offset | calibration worst | group | error |"
    lines.append(head + " vs ancestor |")
    lines.append("|---:|---:|---:|---|---:|---|---:|---:|")
    found = {}
    for points, table in tables.items():
        fitted = fit_whole(table, calib, {k: measured[f"calib {k}"] for k in calib})
        worst = max(abs(r["error"]) for r in fitted.notes["calibration"].values())
        errors = {k: predict_ms(net, fitted) / measured[k] - 1 for k, net in tests.items()}
        relative = {k: (1 + e) / (1 + errors["ancestor"]) - 1 for k, e in errors.items()}
        found[points] = {"errors": errors, "relative": relative, "scale": fitted.scale, "offset_ms": fitted.offset_ms}
        fit = f"{fitted.scale:.3f}, {fitted.off_lattice:.2f}, {fitted.offset_ms:+.2f} ms"
        for group in ("ancestor", *STUDIES):
            keys = [k for k in tests if k == group or f" {group} " in k]
            e, r = [errors[k] for k in keys], [relative[k] for k in keys]
            lines.append(
                f"| {points} | {table.notes['timed_layers']} | {seconds[points]} | {fit} | {worst:.1%} | {group} "
                f"| {min(e):+.1%} .. {max(e):+.1%} | {min(r):+.1%} .. {max(r):+.1%} |"
            )
    print("\n".join(lines))
    if args.out:
        write_json_atomic(f"{args.out}.json", {"measured_ms": measured, "tables": found, "args": vars(args)})
        atomic_write_text(f"{args.out}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
