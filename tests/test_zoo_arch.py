"""The study on any classifier: torchvision architectures with random weights on the shipped mini
data set (issue #27, section 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _helpers import QUICK, set_args
from squish_plugin import load_pruned
from squish_plugin.cli import app
from squish_plugin.errors import InvalidArgumentError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("squish_cache")


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "torchvision:mobilenet_v3_small"])
def test_run_and_export_a_torchvision_classifier(tmp_path, arch):
    sets = {**QUICK, "evolution.generations": 1, "model.arch": arch, "model.weights": "none", "model.head": "random"}
    sets |= {"data.train_size": 64, "data.eval_size": 64, "output.dir": str(tmp_path / "runs")}
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), *set_args(sets)])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    records = json.loads((run / "lineage.json").read_text())["records"]
    assert records[1]["params"] < records[0]["params"]
    child = load_pruned(run / records[1]["checkpoint"])  # rebuilt from the architecture's name
    assert sum(p.numel() for p in child.parameters()) == records[1]["params"]
    assert runner.invoke(app, ["export", str(run), "--size", "64"]).exit_code == 0


@pytest.mark.parametrize(
    "sets, match",
    [
        ({"model.arch": "torchvision:resnet1"}, "torchvision has no classifier 'resnet1'"),
        ({"model.arch": "keras:resnet18"}, "torchvision:<name>"),
        ({"model.arch": "torchvision:resnet18", "model.head": "pretrained"}, "use head: random"),
    ],
)
def test_a_wrong_architecture_is_one_sentence_at_dry_run(sets, match):
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), "--dry-run", *set_args(sets)])
    assert result.exit_code == 2 and match in result.output and "Traceback" not in result.output


def test_dry_run_checks_the_class_folders_against_the_head(tmp_path):
    """CIFAR-style class folders with a pretrained (wnid) head: --dry-run stops in one sentence
    that says what to write, before anything is trained; head: random, and the default head:
    auto (random for such folders), pass."""
    for split in ("train", "val"):
        for name in ("airplane", "cat"):
            (tmp_path / split / name).mkdir(parents=True)
    args = ["run", str(EXAMPLES / "quickstart.yaml"), "--dry-run", "--set", f"data.root={tmp_path}"]
    result = runner.invoke(app, [*args, "--set", "model.head=pretrained"])
    assert result.exit_code == 2 and "'airplane' is not one: write model.head: random" in result.output
    assert runner.invoke(app, [*args, "--set", "model.head=random"]).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, "--set", "model.num_classes=10"])
    assert result.exit_code == 2 and "model.num_classes is 10 but the data has 2 classes" in result.output


def test_a_size_the_model_cannot_learn_at_is_warned_and_the_report_names_the_sizes(tmp_path):
    """At 32 px SqueezeNet's last convolution sees 1x1 maps (it stayed at chance): --dry-run warns
    in one sentence naming the size that gives 2x2; a run's report says where it trained and evaluated."""
    args = ["run", str(EXAMPLES / "quickstart.yaml"), "--dry-run", *set_args({"data.train_size": 32})]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "at 32 px the model's last convolution sees 1x1 feature maps" in result.output
    assert "reach 2x2 from 48 px" in result.output
    assert "warning: at 112 px" not in runner.invoke(app, args[:4]).output
    from squish_plugin.study.report import write_report

    recipe = {"data": {"train_size": 112, "train_crop": None, "eval_size": 128}}
    records = [
        {"generation": 0, "seed": 0, "parent": None, "params": 1, "size_mb": 0.1, "macs": 1, "top1": 1.0, "top5": 1.0}
        | {"train_seconds": 1.0, "checkpoint": "c.pt", "widths": {"a": 1}}
    ]
    text = write_report(tmp_path, records, squishednets=[], recipe=recipe)["report"].read_text()
    assert "Trained on 112-px images, evaluated at 128 px." in text


def test_a_latency_table_is_measured_for_a_torchvision_classifier(tmp_path):
    """`bench table` / a latency-aware study on resnet18: the table covers its layers (timers given
    as parameters: layer time ~ MACs, a network the sum of its layers); depthwise convolutions
    (mobilenet_v3_small) are refused in one sentence naming the layer."""
    import torch

    from _helpers import smooth
    from squish_plugin.study.latency import TableTimers, ensure_table
    from squish_plugin.study.recipe import load_recipe
    from squish_plugin.synthesis.latency import layer_geometry, load_table

    def networks(nets):
        inputs = torch.zeros(1, 3, 64, 64)
        return {
            n: sum(smooth(g, g["cin"], g["cout"]) for g in layer_geometry(m, inputs).values()) for n, m in nets.items()
        }

    sets = {"model.arch": "torchvision:resnet18", "model.weights": "none", "model.head": "random"}
    sets |= {"data.eval_size": 64, "evolution.resource": "latency", "evolution.round_to": 8}
    recipe = load_recipe(EXAMPLES / "quickstart.yaml", [f"{k}={v}" for k, v in sets.items()])
    path = ensure_table(recipe, timers=TableTimers(smooth, networks), echo=lambda _: None)
    table = load_table(path)
    assert {"conv1", "layer4.1.conv2", "fc"} <= set(table.layers) and table.round_to == 8
    mobile = load_recipe(
        EXAMPLES / "quickstart.yaml",
        [*(f"{k}={v}" for k, v in sets.items()), "model.arch=torchvision:mobilenet_v3_small"],
    )
    with pytest.raises(InvalidArgumentError, match="'features.1.block.0.0': the latency table covers ungrouped"):
        ensure_table(mobile, timers=TableTimers(smooth, networks), echo=lambda _: None)
