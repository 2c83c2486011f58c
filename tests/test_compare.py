"""`squish-plugin compare`: baselines on an evolutionary run's schedule, at its sizes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from typer.testing import CliRunner

from _helpers import QUICK, set_args
from squish_plugin import InvalidArgumentError
from squish_plugin.baselines.pruners import METHODS, PruneContext, prune_to
from squish_plugin.cli import app

pytest.importorskip("nni")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "nni-taylor"))
def test_prune_to_hits_target_within_tolerance(method):
    """Every baseline reaches a given parameter count within 2%, physically."""
    model = torchvision.models.squeezenet1_1(num_classes=10).eval()
    ctx = PruneContext(torch.zeros(1, 3, 64, 64), None, seed=0)
    child = prune_to(model, method, 400_000, ctx)
    got = sum(p.numel() for p in child.parameters())
    assert abs(got / 400_000 - 1) <= 0.02
    assert child(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_unknown_method_and_unreachable_target():
    model = torchvision.models.squeezenet1_1(num_classes=10).eval()
    ctx = PruneContext(torch.zeros(1, 3, 64, 64), None, seed=0)
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        prune_to(model, "magic", 400_000, ctx)
    with pytest.raises(InvalidArgumentError, match="could not reach"):
        prune_to(model, "tp-magnitude", 10, ctx)


def test_compare_on_a_quickstart_run(tmp_path, squish_cache):
    """End to end: a 2-generation quickstart run, then two baselines on its schedule;
    table, CSV (one row per method and SquishedNet) and Pareto plot are written."""
    ran = runner.invoke(
        app,
        [
            "run",
            str(EXAMPLES / "quickstart.yaml"),
            *set_args({**QUICK, "train.distill.teacher": "ancestor", "output.dir": tmp_path / "runs"}),
        ],
    )
    assert ran.exit_code == 0, ran.output
    run_dir = next((tmp_path / "runs").iterdir())
    recipe = tmp_path / "compare.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "c",
                "run": str(run_dir),
                "methods": ["tp-magnitude", "nni-l1"],
                "extra_params": [700_000],
                "output": {"dir": str(tmp_path / "cmp")},
            }
        )
    )
    result = runner.invoke(app, ["compare", str(recipe)])
    assert result.exit_code == 0, result.output
    out = next((tmp_path / "cmp").iterdir())
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert {r["method"] for r in rows} == {"ancestor", "evolutionary", "tp-magnitude", "nni-l1"}
    ours = {r["generation"]: int(r["params"]) for r in rows if r["method"] == "evolutionary"}
    for r in (r for r in rows if r["method"] != "ancestor"):
        assert abs(int(r["params"]) / ours[r["generation"]] - 1) <= 0.02
        assert float(r["epochs"]) == 0.5 + 0.5 * int(r["generation"])
    assert "Protocol" in (out / "comparison.md").read_text()
    # every baseline row keeps its network's structure (its widths: what its speed depends on)
    stored = json.loads((out / "results.json").read_text())
    nni = stored["nni-l1@0"]
    assert all(set(r["widths"]) >= {"features.0", "classifier.1"} and r["widths"]["classifier.1"] == 10 for r in nni)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the 10x-smaller-style extra point: the run's first generation at <= 700k parameters
    lineage = json.loads((run_dir / "lineage.json").read_text())["records"]
    first = next(r["generation"] for r in lineage if r["generation"] > 0 and r["params"] <= 700_000)
    assert any(r["generation"] == str(first) and "<=700k" in r["squishednet"] for r in rows)
    # the same baseline with the run's distillation is a separate method, added on resume
    more = runner.invoke(
        app, ["compare", str(recipe), "--resume", str(out), "--set", "distill=run", "--set", "methods=[nni-l1]"]
    )
    assert more.exit_code == 0, more.output
    table = list(csv.DictReader((out / "equal_budget.csv").open()))
    assert list(table[0]) == ["method", "seed", "params", "macs", "epochs", "top1_128"]
    assert {r["method"] for r in table} == {"ancestor", "evolutionary", "tp-magnitude", "nni-l1", "nni-l1+kd"}
    kd = [r for r in table if r["method"] == "nni-l1+kd"]
    plain = [r for r in table if r["method"] == "nni-l1"]
    assert len(kd) == len(plain) and [r["top1_128"] for r in kd] != [r["top1_128"] for r in plain]


def test_compare_over_seeds_with_and_without_distillation(tmp_path, monkeypatch, squish_cache):
    """The issue-#15 protocol: one run per seed, each with a held-out slice; every baseline
    runs once per seed, plain and +kd, on that run's training images less its held-out
    slice; equal_budget.csv has one row per method, seed and size, and the table gives
    mean ± sd over the seeds."""
    from squish_plugin.baselines import protocol

    runs = []
    for seed in (0, 1):
        sets = {**QUICK, "seed": seed, "data.holdout": 0.1, "train.distill.teacher": "ancestor"}
        ran = runner.invoke(
            app, ["run", str(EXAMPLES / "quickstart.yaml"), *set_args({**sets, "output.dir": tmp_path / f"r{seed}"})]
        )
        assert ran.exit_code == 0, ran.output
        runs.append(str(next((tmp_path / f"r{seed}").iterdir())))
    seen = []
    real_train = protocol.train

    def counting(model, split, *args, **kwargs):
        seen.append(len(split))
        return real_train(model, split, *args, **kwargs)

    monkeypatch.setattr(protocol, "train", counting)
    recipe = tmp_path / "compare.yaml"
    spec = {"name": "c", "run": runs, "methods": ["nni-l1"], "distill": "both", "output": {"dir": str(tmp_path / "c")}}
    recipe.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["compare", str(recipe)])
    assert result.exit_code == 0, result.output
    assert set(seen) == {360}  # quickstart: 400 training images, 40 held out
    out = next((tmp_path / "c").iterdir())
    table = list(csv.DictReader((out / "equal_budget.csv").open()))
    assert {(r["method"], r["seed"]) for r in table} == {
        (m, s) for m in ("ancestor", "evolutionary", "nni-l1", "nni-l1+kd") for s in ("0", "1")
    }
    assert len([r for r in table if r["method"] == "nni-l1+kd"]) == 2 * len(
        [r for r in table if r["method"] == "ancestor"]
    )  # two sizes per seed
    md = (out / "comparison.md").read_text()
    assert "Mean over seeds" in md and "| ancestor | ancestor | 2 |" in md and " ± " in md


def test_compare_recipe_errors(tmp_path):
    recipe = tmp_path / "c.yaml"
    recipe.write_text(yaml.safe_dump({"name": "c", "run": str(tmp_path), "methods": ["nni-magic"]}))
    result = runner.invoke(app, ["compare", str(recipe)])
    assert result.exit_code == 2 and "'methods.0'" in result.output
    recipe.write_text(yaml.safe_dump({"name": "c", "run": str(tmp_path)}))
    result = runner.invoke(app, ["compare", str(recipe)])
    assert result.exit_code == 2 and "lineage.json" in result.output


def test_distill_run_needs_a_distilled_run(tmp_path):
    """`distill: run` against a run trained without distillation ends in one sentence
    (exit 2) instead of silently writing plain rows under a `+kd` name."""
    from squish_plugin.study.recipe import load_recipe

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    plain = load_recipe(EXAMPLES / "quickstart.yaml", ["train.distill.teacher=none"]).model_dump()
    assert plain["train"]["distill"]["teacher"] == "none"
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
    (run_dir / "lineage.json").write_text(
        json.dumps(
            {
                "format": "squish-plugin/lineage-v1",
                "seed": 0,
                "records": [{"generation": 0, "checkpoint": "checkpoints/gen_00.pt", "params": 1}],
            }
        )
    )
    recipe = tmp_path / "c.yaml"
    out = tmp_path / "cmp"
    recipe.write_text(
        yaml.safe_dump(
            {"name": "c", "run": str(run_dir), "methods": ["nni-l1"], "distill": "run", "output": {"dir": str(out)}}
        )
    )
    result = runner.invoke(app, ["compare", str(recipe)])
    assert result.exit_code == 2, result.output
    assert "distill 'run' needs a run trained with distillation" in result.output.replace("\n", " ")
    assert "Traceback" not in result.output and not out.exists()


def _split(seed: int, n: int = 40, size: int = 64):
    from squish_plugin.study.data import LoadedSplit

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return LoadedSplit(images, torch.randint(0, 10, (n,), generator=g), tuple(f"c{i}" for i in range(10)))


def test_nni_taylor_scores_channels_from_training_batches():
    """The strongest published baseline: NNI's TaylorPruner reaches the target size, is
    the same for the same data and seed, ranks channels from the data (other batches, other
    network; not L1's choice), and without training data says so in one sentence."""
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=10).eval()
    example = torch.zeros(1, 3, 64, 64)

    def taylor(data_seed):
        ctx = PruneContext(example, _split(data_seed), seed=0, batch_size=8)
        return prune_to(model, "nni-taylor", 400_000, ctx)

    a, b, other = taylor(1), taylor(1), taylor(2)
    assert abs(sum(p.numel() for p in a.parameters()) / 400_000 - 1) <= 0.02
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    l1 = prune_to(model, "nni-l1", 400_000, PruneContext(example, None, seed=0))

    def widths(net):
        return [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]

    def kept_weights(net):
        return net.features[0].weight

    assert not torch.equal(kept_weights(a), kept_weights(other)) or widths(a) != widths(other)
    assert not torch.equal(kept_weights(a), kept_weights(l1)) or widths(a) != widths(l1)
    with pytest.raises(InvalidArgumentError, match="needs training data"):
        prune_to(model, "nni-taylor", 400_000, PruneContext(example, None, seed=0))


def test_compare_finishes_the_best_distilled_baseline_and_a_scratch_control(tmp_path, squish_cache):
    """With `finish` and `scratch`: the run's own networks are finished, the distilled
    baseline with the best held-out top-1 at selection is finished with the same settings,
    and the evolutionary widths are trained from random weights for the same total epochs
    (at the recipe's scratch_lr); finished.csv holds one row per method, seed and network in
    the issue's columns."""
    sets = {**QUICK, "train.distill.teacher": "ancestor", "data.holdout": 0.2, "finish.epochs": 1}
    ran = runner.invoke(
        app, ["run", str(EXAMPLES / "quickstart.yaml"), *set_args({**sets, "output.dir": tmp_path / "r"})]
    )
    assert ran.exit_code == 0, ran.output
    run_dir = next((tmp_path / "r").iterdir())
    spec = {
        "name": "c",
        "run": str(run_dir),
        "methods": ["tp-magnitude", "nni-l1"],
        "distill": "run",
        "finish": True,
        "scratch": True,
        "scratch_lr": 0.002,
        "extra_params": [600_000],
        "finish_nets": ["SquishedNet-1", "2.06x"],
        "output": {"dir": str(tmp_path / "cmp")},
    }
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["compare", str(tmp_path / "compare.yaml")])
    assert result.exit_code == 0, result.output
    out = next((tmp_path / "cmp").iterdir())
    results = json.loads((out / "results.json").read_text())
    held = {k.split("@")[0]: sum(r["holdout_top1"] for r in v) for k, v in results.items() if "+kd" in k}
    best = max(sorted(held), key=held.get)
    rows = list(csv.DictReader((out / "finished.csv").open()))
    assert list(rows[0]) == ["method", "seed", "net", "params", "macs", "epochs", "top1_128", "holdout_top1"]
    by = {(r["method"], r["net"]): r for r in rows}
    assert {m for m, _ in by} == {"ancestor", "evolutionary", best, "scratch"}
    for net in ("SquishedNet-1", "2.06x"):
        ours, theirs, scratch = by[("evolutionary", net)], by[(best, net)], by[("scratch", net)]
        assert scratch["params"] == ours["params"]  # the same widths
        assert abs(int(theirs["params"]) / int(ours["params"]) - 1) <= 0.02
        assert float(theirs["epochs"]) == float(ours["epochs"])  # the same budget
        assert float(scratch["epochs"]) == round(float(ours["epochs"]))
    assert (out / "finished.png").stat().st_size > 0
    assert "best distilled baseline" in result.output
    lrs = {k.split("@")[0]: v["settings"]["lr"] for k, v in json.loads((out / "finished.json").read_text()).items()}
    assert lrs["scratch"] == 0.002 and lrs[best] == 0.01  # the control's own lr; the baseline keeps the run's
