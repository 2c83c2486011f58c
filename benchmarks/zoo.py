"""Issue #26: every torchvision model torch-pruning prunes, ours prunes too, about as fast.

For each model of the zoo below (classification, segmentation, detection; random weights), one
pruning is timed with torch-pruning's own ``MetaPruner`` (L1 magnitude, ``pruning_ratio=0.1``) and
with ``EvolutionarySynthesisPruner`` (``env=0.9``), alternately, on fresh copies of the same
model, ``--rounds`` times each; a time is the constructor plus one ``step()`` (what a user waits
for: torch-pruning traces in its constructor, and so do we). Both get the same ``example_inputs``
and the same ``ignored_layers`` (the classifier, and for detectors the heads torch-pruning's own
prunability script leaves alone). A pruning counts as ok when ``step()`` returns and the pruned
model still runs on the example inputs.

    python benchmarks/zoo.py                       # all models -> benchmarks/results/zoo.csv
    python benchmarks/zoo.py --models resnet18 vit_b_16 --rounds 1 --out /tmp/zoo.csv

Run it on an idle machine: the ratio is only meaningful when nothing else loads the cores.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from torch import nn

from squish_plugin import EvolutionarySynthesisPruner

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "zoo.csv"
COLUMNS = ("model", "tp_ok", "ours_ok", "tp_s", "ours_s", "params", "tp_params", "ours_params", "note")

CLASSIFIERS = [
    "alexnet",
    "vgg11_bn",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "densenet121",
    "squeezenet1_0",
    "squeezenet1_1",
    "googlenet",
    "inception_v3",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mnasnet1_0",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "shufflenet_v2_x1_0",
    "convnext_tiny",
    "vit_b_16",
]
SEGMENTERS = [
    "fcn_resnet50",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
]
DETECTORS = [
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "keypointrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
]
MODELS = CLASSIFIERS + SEGMENTERS + DETECTORS


def build(name: str) -> tuple[nn.Module, object]:
    """A model with random weights (seeded) and its example inputs."""
    torch.manual_seed(0)
    kwargs: dict[str, object] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs |= {"aux_logits": False, "init_weights": True}
    if name in SEGMENTERS:
        kwargs |= {"weights_backbone": None, "aux_loss": False}
    if name in DETECTORS:
        # trainable_backbone_layers=5: torchvision freezes BatchNorm otherwise (FrozenBatchNorm2d)
        kwargs |= {"weights_backbone": None}
        if not name.startswith("ssd"):
            kwargs |= {"trainable_backbone_layers": 5}
    model = torchvision.models.get_model(name, **kwargs).eval()
    if name in DETECTORS:
        return model, [torch.rand(3, 320, 320)]
    size = 299 if name == "inception_v3" else 224
    return model, torch.randn(1, 3, size, size)


def ignored(name: str, model: nn.Module, inputs: object) -> list[nn.Module]:
    """What neither pruner may cut: the last layer to run (the classifier) and the detector heads
    torch-pruning's own prunability script leaves alone."""
    out: list[nn.Module] = []
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda m, _i, _o: order.append(m))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()
    if name not in DETECTORS:
        out.append(order[-1])
    if name.startswith("ssd") or name.startswith(("retinanet", "fcos")):
        out.append(model.head)
    elif name in DETECTORS:
        out += [model.rpn.head.cls_logits, model.rpn.head.bbox_pred, model.backbone.fpn, model.roi_heads]
    out += [m for m in model.modules() if isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)]
    return out


def runs(model: nn.Module, inputs: object) -> None:
    with torch.no_grad():
        model(inputs)


def prune_tp(name: str, model: nn.Module, inputs: object) -> None:
    kwargs = {}
    if isinstance(model, torchvision.models.VisionTransformer):
        kwargs["num_heads"] = {b.self_attention: b.self_attention.num_heads for b in model.encoder.layers}
    pruner = tp.pruner.MetaPruner(
        model,
        inputs,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.1,
        ignored_layers=ignored(name, model, inputs),
        **kwargs,
    )
    pruner.step()
    if isinstance(model, torchvision.models.VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels


def prune_ours(name: str, model: nn.Module, inputs: object) -> None:
    pruner = EvolutionarySynthesisPruner(model, inputs, env=0.9, ignored_layers=ignored(name, model, inputs))
    pruner.step()
    if isinstance(model, torchvision.models.VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels


def attempt(prune, name: str, template: nn.Module, inputs: object) -> tuple[bool, float, int, str]:
    model = copy.deepcopy(template)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prune(name, model, inputs)
        seconds = time.perf_counter() - start
        runs(model, inputs)
    except Exception as exc:  # a benchmark records failures, it does not stop on them
        text = str(exc).strip().splitlines()
        return False, time.perf_counter() - start, 0, f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
    return True, seconds, sum(p.numel() for p in model.parameters()), ""


def measure(name: str, rounds: int) -> dict[str, object]:
    template, inputs = build(name)
    times: dict[str, list[float]] = {"tp": [], "ours": []}
    result: dict[str, object] = {"model": name, "params": sum(p.numel() for p in template.parameters())}
    notes = []
    for _ in range(rounds):  # alternate: both see the same machine state
        for who, prune in (("tp", prune_tp), ("ours", prune_ours)):
            if result.get(f"{who}_ok") is False:
                continue
            ok, seconds, params, note = attempt(prune, name, template, inputs)
            result[f"{who}_ok"] = ok
            if ok:
                times[who].append(seconds)
                result[f"{who}_params"] = params
            else:
                notes.append(f"{who}: {note}")
    for who in ("tp", "ours"):
        result[f"{who}_s"] = round(statistics.median(times[who]), 3) if times[who] else ""
    result["note"] = " | ".join(notes)
    return result


def _ok(value: object) -> bool:
    return value is True or value == "True"  # read back from the CSV, a flag is text


def summary(rows: list[dict[str, object]]) -> str:
    both = [r for r in rows if _ok(r["tp_ok"]) and _ok(r["ours_ok"])]
    ratios = sorted((float(r["ours_s"]) / float(r["tp_s"]), str(r["model"])) for r in both)
    missing = [str(r["model"]) for r in rows if _ok(r["tp_ok"]) and not _ok(r["ours_ok"])]
    lines = [
        f"torch-pruning ok {sum(_ok(r['tp_ok']) for r in rows)}/{len(rows)}, "
        f"ours ok {sum(_ok(r['ours_ok']) for r in rows)}/{len(rows)}; torch-pruning only: {missing or 'none'}",
    ]
    if ratios:
        lines.append(
            f"ours / torch-pruning seconds: median {statistics.median(r for r, _ in ratios):.2f}x, "
            f"worst {ratios[-1][0]:.2f}x ({ratios[-1][1]}), best {ratios[0][0]:.2f}x ({ratios[0][1]})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.rounds))
        r = rows[-1]
        print(
            f"{name:40s} tp {r['tp_ok']!s:5} {r['tp_s']!s:>7}  ours {r['ours_ok']!s:5} {r['ours_s']!s:>7}  {r['note']}"
        )
        sys.stdout.flush()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists() and args.models != MODELS:  # a partial run replaces its models' rows and keeps the others
        with args.out.open() as f:
            kept = [r for r in csv.DictReader(f) if r["model"] not in args.models]
        order = {name: i for i, name in enumerate(MODELS)}
        rows = sorted(kept + rows, key=lambda r: order.get(str(r["model"]), len(order)))
    tmp = args.out.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in COLUMNS})
    os.replace(tmp, args.out)
    print(summary(rows))


if __name__ == "__main__":
    main()
