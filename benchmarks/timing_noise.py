"""Issue #28 B: how reproducible one sitting's whole-network timings are, and what makes them so.

The same ONNX graphs (the ancestor, the latency-aware study's smallest generation, a random-width
network and a parameter-budget generation off the lattice), each opened in 4 ONNX Runtime
sessions, timed interleaved (every session of every graph once per round, 6 batches each) for 15
rounds; once with ONNX Runtime's default (threads keep spinning after a run) and once with
`session.force_spinning_stop` (what `onnxruntime_runner` now does). Per graph: the rounds'
coefficient of variation within a session, and how far its 4 sessions disagree by their median of
all batches, by the median of 5 rounds, and by their fastest round (what `time_networks` keeps).

    python benchmarks/timing_noise.py    # -> benchmarks/results/latency/timing-noise.json

Run it on an idle machine: nothing else heavy beside it.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_model import RESULTS, networks  # noqa: E402
from squish_plugin import squeezenet1_1_ancestor  # noqa: E402
from squish_plugin.deploy.backends import MachineLoad, _time, cpu_name, onnxruntime_runner  # noqa: E402
from squish_plugin.deploy.export import export_onnx  # noqa: E402

GRAPHS = ("ancestor", "latency-gen10", "random-03", "params-gen01")
SESSIONS, ROUNDS, RUNS = 4, 15, 6


def spread(values: list[float]) -> float:
    return round(100 * (max(values) / min(values) - 1), 1)


def measure(paths: dict[str, Path], spin_stop: bool) -> dict[str, dict]:
    runners = {
        (g, s): onnxruntime_runner(paths[g], batch=32, size=224, threads=2, spin_stop=spin_stop)[0]
        for g in GRAPHS
        for s in range(SESSIONS)
    }
    for run in runners.values():
        _time(run, 3, 0)
    rounds: dict[tuple, list[float]] = {k: [] for k in runners}
    for _ in range(ROUNDS):
        for key, run in runners.items():
            rounds[key].append(statistics.median(_time(run, 0, RUNS)) * 1e3)
    out = {}
    for g in GRAPHS:
        per = [rounds[(g, s)] for s in range(SESSIONS)]
        out[g] = {
            "round_cv_pct": round(100 * float(np.mean([np.std(r) / np.mean(r) for r in per])), 1),
            "sessions_spread_pct": {
                "median_of_all_rounds": spread([statistics.median(r) for r in per]),
                "median_of_5_rounds": spread([statistics.median(r[:5]) for r in per]),
                "fastest_of_5_rounds": spread([min(r[:5]) for r in per]),
                "fastest_of_all_rounds": spread([min(r) for r in per]),
            },
            "fastest_round_ms": [round(min(r), 2) for r in per],
        }
    return out


def main() -> None:
    torch.set_num_threads(2)
    ancestor = squeezenet1_1_ancestor(10, weights=None).eval()
    nets = networks(ancestor, 0, 12, 16)
    result: dict = {"cpu": cpu_name(), "sessions": SESSIONS, "rounds": ROUNDS, "runs_per_round": RUNS}
    with tempfile.TemporaryDirectory() as tmp, MachineLoad() as load:
        paths = {g: Path(tmp) / f"{g}.onnx" for g in GRAPHS}
        for g in GRAPHS:
            export_onnx(nets[g][2].eval(), paths[g], batch=32, size=224)
        for spin_stop in (False, True):
            result["spin_stop" if spin_stop else "spinning"] = measure(paths, spin_stop)
    result["load"] = load.record()
    out = RESULTS / "latency" / "timing-noise.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
