"""How steady is this machine's speed? Times one network (ONNX Runtime CPU EP, fp32) again
and again, with the machine-load record of each sample (other processes' cores and, on a
virtual machine, the cores its host stole), so drift that no load figure explains shows up
as what it is. Issue #16's G3 ("reproduce within 10%") is judged against it.

Run:
    python benchmarks/host_drift.py [--model benchmarks/results/imagenette-latency/seed-0/checkpoints/gen_00.pt]
        [--samples 10 --pause 20 --batch 32 --threads 2] [--out FILE_STEM]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from squish_plugin.deploy.backends import MachineLoad, bench_interleaved, cpu_name
from squish_plugin.deploy.export import export_onnx
from squish_plugin.persistence import atomic_write_text, load_pruned, write_json_atomic

MODEL = "benchmarks/results/imagenette-latency/seed-0/checkpoints/gen_00.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--pause", type=float, default=20.0, help="seconds between samples")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(load_pruned(Path(args.model)).eval(), path, batch=args.batch)
        for i in range(args.samples):
            with MachineLoad() as load:
                (result,) = bench_interleaved(
                    {"model": path}, backend="onnxruntime", batch=args.batch, threads=args.threads, rounds=3, runs=6
                )
            ms = 1000.0 * args.batch / result["images_per_second"]
            samples.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "ms": round(ms, 2), "load": load.record()})
            print(f"{samples[-1]['time']}  {ms:7.1f} ms  {samples[-1]['load']}", flush=True)
            if i + 1 < args.samples:
                time.sleep(args.pause)
    ms = [s["ms"] for s in samples]
    summary = (
        f"{cpu_name()}: {args.model} at batch {args.batch}, {args.threads} threads, {len(ms)} samples "
        f"{args.pause:.0f} s apart: median {statistics.median(ms):.1f} ms, min {min(ms):.1f}, max {max(ms):.1f} "
        f"(max / min = {max(ms) / min(ms):.2f})"
    )
    print(summary)
    if args.out:
        write_json_atomic(f"{args.out}.json", {"cpu": cpu_name(), "samples": samples, "args": vars(args)})
        atomic_write_text(f"{args.out}.md", summary + "\n")


if __name__ == "__main__":
    main()
