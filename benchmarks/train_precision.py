"""How much faster a training step runs with ``train.precision: bf16`` (bfloat16 autocast)
than in float32, on this CPU: the ancestor and seed 0's SquishedNet-1, SquishedNet-4 and 10x
networks as students, the ancestor as the distillation teacher, batch 32 of 128-px windows
(the study's training) and of whole 224-px images (the finishing's last epochs), SGD with
the study's loss; fp32 and bf16 steps interleaved over rounds in one process, medians.

    python benchmarks/train_precision.py    # -> benchmarks/results/train_precision.json

Run it on an idle machine: nothing else heavy beside it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from squish_plugin import squeezenet1_1_ancestor
from squish_plugin.deploy.backends import MachineLoad, cpu_name
from squish_plugin.deploy.latency import with_widths
from squish_plugin.study.training import TrainSettings, _autocast, _loss, cpu_bf16_supported

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "results" / "imagenette-seeds" / "seed-0"
NETS = {"ancestor": 0, "SquishedNet-1": 1, "SquishedNet-4": 6, "10x": 8}
ROUNDS, STEPS = 5, 3


def students() -> dict[str, torch.nn.Module]:
    ancestor = squeezenet1_1_ancestor(10, weights=None)
    records = {r["generation"]: r for r in json.loads((RUN / "lineage.json").read_text())["records"]}
    inputs = torch.zeros(1, 3, 224, 224)
    return {
        name: ancestor if g == 0 else with_widths(ancestor, records[g]["widths"], inputs) for name, g in NETS.items()
    }


def step_ms(model, opt, teacher, images, labels, precision: str) -> float:
    settings = TrainSettings(precision=precision)
    started = time.perf_counter()
    with _autocast(torch.device("cpu"), precision):
        loss = _loss(model(images), labels, teacher, images, settings)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    if not cpu_bf16_supported():
        raise SystemExit("this CPU runs no bfloat16 natively: nothing to compare.")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    teacher = squeezenet1_1_ancestor(10, weights=None).eval().to(memory_format=torch.channels_last)
    result: dict = {"cpu": cpu_name(), "torch": torch.__version__, "threads": 2, "batch": 32, "rows": []}
    with MachineLoad() as load:
        for size in (128, 224):
            images = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
            labels = torch.randint(0, 10, (32,))
            for name, model in students().items():
                model = model.train().to(memory_format=torch.channels_last)
                opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
                times: dict[str, list[float]] = {"fp32": [], "bf16": []}
                for precision in times:  # warm-up
                    step_ms(model, opt, teacher, images, labels, precision)
                for _ in range(ROUNDS):
                    for precision in times:
                        times[precision] += [
                            step_ms(model, opt, teacher, images, labels, precision) for _ in range(STEPS)
                        ]
                fp32, bf16 = (statistics.median(times[p]) for p in ("fp32", "bf16"))
                row = {"net": name, "size": size, "fp32_ms": round(fp32, 1), "bf16_ms": round(bf16, 1),
                       "speedup": round(fp32 / bf16, 2)}  # fmt: skip
                result["rows"].append(row)
                print(row, flush=True)
    result["load"] = load.record()
    out = ROOT / "benchmarks" / "results" / "train_precision.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
