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
    """CIFAR-style class folders with the quickstart's pretrained (wnid) head: --dry-run stops in
    one sentence that says what to write, before anything is trained; head: random passes."""
    for split in ("train", "val"):
        for name in ("airplane", "cat"):
            (tmp_path / split / name).mkdir(parents=True)
    args = ["run", str(EXAMPLES / "quickstart.yaml"), "--dry-run", "--set", f"data.root={tmp_path}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "'airplane' is not one: write model.head: random" in result.output
    assert runner.invoke(app, [*args, "--set", "model.head=random"]).exit_code == 0
    result = runner.invoke(app, [*args, "--set", "model.head=random", "--set", "model.num_classes=10"])
    assert result.exit_code == 2 and "model.num_classes is 10 but the data has 2 classes" in result.output
