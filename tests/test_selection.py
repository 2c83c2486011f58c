"""Issue #15's protocol and levers: the held-out slice, the ancestor check, offspring
repaired to equal size, data-driven strengths, and the fine-tune screen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from _helpers import QUICK, set_args
from squish_plugin import EvolutionarySynthesisPruner, SynthesisConfig, squeezenet1_1_ancestor
from squish_plugin.cli import app
from squish_plugin.errors import InvalidArgumentError
from squish_plugin.study.data import LoadedSplit
from squish_plugin.study.holdout import holdout_split
from squish_plugin.study.selection import checked_ancestor
from squish_plugin.synthesis.strengths import data_strengths

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("squish_cache")


def _split(n_per_class=(30, 12, 3)) -> LoadedSplit:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    images = torch.arange(len(labels)).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8)
    return LoadedSplit(images.contiguous(), labels, ("a", "b", "c"))


def test_holdout_is_stratified_disjoint_and_fixed_by_its_own_seed():
    split = _split()
    rest, held = holdout_split(split, 0.1, seed=0)
    assert held.split.labels.bincount().tolist() == [3, 1, 1]  # 10% per class, at least one
    assert len(rest) + len(held.split) == len(split)
    ids_rest = set(rest.images[:, 0, 0, 0].tolist())
    ids_held = set(held.split.images[:, 0, 0, 0].tolist())
    assert not ids_rest & ids_held  # no image trains and judges
    again = holdout_split(split, 0.1, seed=0)[1]
    other = holdout_split(split, 0.1, seed=1)[1]
    assert again.record() == held.record() and other.record()["digest"] != held.record()["digest"]
    with pytest.raises(InvalidArgumentError, match=r"held-out fraction must be a number in \(0, 1\)"):
        holdout_split(split, 1.5)


def test_ancestor_check_restores_the_untrained_weights_when_fine_tuning_hurts(tmp_path):
    model = torch.nn.Linear(2, 2)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([{"top1": 80.0}, {"top1": 70.0}])

    def ruin():
        with torch.no_grad():
            model.weight.fill_(3.0)

    decision = checked_ancestor(model, ruin, lambda m: next(scores), tmp_path)
    assert decision["kept"] == "untrained"
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert json.loads((tmp_path / "ancestor.json").read_text())["holdout_top1_untrained"] == 80.0
    better = iter([{"top1": 70.0}, {"top1": 80.0}])
    assert checked_ancestor(model, ruin, lambda m: next(better), tmp_path)["kept"] == "fine-tuned"
    assert float(model.weight.detach()[0, 0]) == 3.0


def test_size_tolerance_repairs_every_offspring_to_the_budget():
    """Without repair the draws scatter around env (the budget is an expectation); with
    size_tolerance=0.005 every offspring lies within 0.5% of env x the parent."""
    model = squeezenet1_1_ancestor(10, weights=None)
    total = sum(p.numel() for p in model.parameters())

    def ratios(tol):
        cfg = SynthesisConfig(env=0.8, temperature=0.05, size_tolerance=tol)
        pruner = EvolutionarySynthesisPruner(model, config=cfg, example_inputs=torch.zeros(1, 3, 64, 64))
        return [sum(p.numel() for p in pruner.offspring(seed=s).parameters()) / total for s in range(8)]

    loose, repaired = ratios(None), ratios(0.005)
    assert max(abs(r - 0.8) for r in loose) > 0.005
    assert all(abs(r - 0.8) <= 0.005 for r in repaired), repaired
    with pytest.raises(InvalidArgumentError, match='needs mode="budget"'):
        SynthesisConfig(mode="paper", size_tolerance=0.005)


def test_taylor_strength_is_zero_for_a_channel_nothing_reads_and_drives_the_encoding():
    """First-order Taylor strengths come from data: a channel whose every consumer weight
    is zero changes no loss, so its strength is 0 (its L1 norm is not), and the pruner
    given those strengths drops it first."""
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=4)
    with torch.no_grad():
        model.features[3].expand1x1.weight[:, 5] = 0  # fire2's squeeze channel 5: read by no one
        model.features[3].expand3x3.weight[:, 5] = 0
    batches = [(torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])) for _ in range(2)]
    taylor = data_strengths(model, batches, kind="taylor")
    squeeze = taylor["features.3.squeeze"]
    assert squeeze[5] == 0 and squeeze.max() > 0
    assert model.features[3].squeeze.weight[5].abs().sum() > 0
    activation = data_strengths(model, batches, kind="activation")
    assert activation["features.0"].shape == (64,) and (activation["features.0"] >= 0).all()
    assert all(p.grad is None for p in model.parameters())  # the model is left as it was
    pruner = EvolutionarySynthesisPruner(model, env=0.99, importance=taylor, example_inputs=torch.zeros(1, 3, 64, 64))
    layer = next(i for i, layer in enumerate(pruner.layers) if layer.name == "features.3.squeeze")
    assert pruner.probabilities()[layer][5] == min(pruner.probabilities()[layer])
    with pytest.raises(InvalidArgumentError, match="no entry for layer"):
        EvolutionarySynthesisPruner(model, importance={"x": torch.ones(3)}).strengths()


def test_protocol_levers_through_a_recipe(tmp_path):
    """A held-out slice is recorded and scored every generation, the ancestor check
    decides generation 0, offspring are screened by a short fine-tune on it, strengths
    are Taylor's, and every screened offspring has the budget's size."""
    sets = {
        **QUICK,
        "data.holdout": 0.1,
        "evolution.size_tolerance": 0.005,
        "evolution.importance": "taylor",
        "evolution.strength_images": 32,
        "evolution.offspring_per_generation": 3,
        "evolution.selection": "finetune",
        "evolution.screen_steps": 2,
        "output.dir": tmp_path / "runs",
    }
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), *set_args(sets)])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    held = json.loads((run / "holdout.json").read_text())
    assert held["images"] == 40 and set(held["per_class"].values()) == {4}  # quickstart: 40 per class
    assert json.loads((run / "ancestor.json").read_text())["kept"] in ("fine-tuned", "untrained")
    recs = json.loads((run / "lineage.json").read_text())["records"]
    assert all("holdout_top1" in r for r in recs)
    for parent, child in zip(recs, recs[1:]):
        assert len(child["screened"]) == 3 and child["screen_seconds"] > 0
        target = 0.9 * parent["params"]
        assert all(abs(s["params"] - target) <= 0.005 * target for s in child["screened"])
        winner = max(child["screened"], key=lambda s: (s["screen"], -child["screened"].index(s)))
        assert child["seed"] == winner["seed"]


def test_held_out_images_are_decoded_like_the_validation_images(tmp_path):
    """The held-out slice leaves the training images and is scored as val is: at
    eval_size with the eval crop, not at the training resolution; a resumed run with
    other training images is refused."""
    from squish_plugin.study.data import load_split
    from squish_plugin.study.recipe import load_recipe
    from squish_plugin.study.selection import held_out

    recipe = load_recipe(EXAMPLES / "quickstart.yaml", ["data.holdout=0.1"])
    d = recipe.data
    train = load_split(d.root, "train", d.train_size, train=True)
    rest, held = held_out(recipe, train, tmp_path)
    assert len(rest) == 360 and held.split.images.shape[1:] == (3, d.eval_size, d.eval_size)
    as_val = load_split(d.root, "train", d.eval_size, train=False)
    assert torch.equal(held.split.images, as_val.images[list(held.indices)])
    other = LoadedSplit(train.images[1:], train.labels[1:], train.classes)
    with pytest.raises(InvalidArgumentError, match="another held-out slice"):
        held_out(recipe, other, tmp_path)


def test_report_shows_the_held_out_column_only_for_runs_that_held_out(tmp_path):
    from squish_plugin.study.report import write_report

    record = {"generation": 0, "parent": None, "params": 727_626, "size_mb": 2.91, "macs": 1.0, "top1": 50.0}
    record |= {"top5": 90.0, "train_seconds": 1.0, "widths": {}, "seed": 0, "checkpoint": "c.pt"}
    write_report(tmp_path / "a", [record], squishednets=[], recipe={}, title="t")
    assert "Held-out" not in (tmp_path / "a" / "report.md").read_text()
    write_report(tmp_path / "b", [{**record, "holdout_top1": 61.25}], squishednets=[], recipe={}, title="t")
    text = (tmp_path / "b" / "report.md").read_text()
    assert "Held-out top-1 (%)" in text and "| 61.25 |" in text


def test_kl_fitness_scores_offspring_by_their_distance_from_the_ancestor(tmp_path):
    """`evolution.fitness: kl` (issue #25): selection scores each screened offspring by minus
    its mean KL divergence from the ancestor on the held-out images; the winner is the one
    closest to the ancestor."""
    from squish_plugin.persistence import load_pruned
    from squish_plugin.study.data import load_split
    from squish_plugin.study.training import mean_kl

    sets = {
        **QUICK,
        "evolution.generations": 1,
        "data.holdout": 0.1,
        "evolution.offspring_per_generation": 2,
        "evolution.selection": "finetune",
        "evolution.screen_steps": 1,
        "evolution.fitness": "kl",
        "output.dir": tmp_path / "runs",
    }
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), *set_args(sets)])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    child = json.loads((run / "lineage.json").read_text())["records"][1]
    scores = [s["screen"] for s in child["screened"]]
    assert all(s < 0 for s in scores) and child["seed"] == child["screened"][scores.index(max(scores))]["seed"]
    ancestor = load_pruned(run / "checkpoints" / "gen_00.pt")
    split = load_split(EXAMPLES / "data" / "imagenette-mini", "val", 64)
    assert mean_kl(ancestor, ancestor, split) == 0.0
    assert mean_kl(load_pruned(run / "checkpoints" / "gen_01.pt"), ancestor, split) > 0.0


def test_epoch_growth_trains_cheaper_offspring_longer_and_records_it(tmp_path):
    """`train.epoch_growth: macs` (issue #25): generation g trains epochs_per_generation x
    (ancestor MACs / its MACs) epochs, recorded in its lineage record (which compare's
    baselines then follow)."""
    sets = {**QUICK, "train.epoch_growth": "macs", "output.dir": tmp_path / "runs"}
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), *set_args(sets)])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    recs = json.loads((run / "lineage.json").read_text())["records"]
    for rec in recs[1:]:
        assert rec["epochs"] == round(0.5 * recs[0]["macs"] / rec["macs"], 4)
    assert recs[2]["epochs"] > recs[1]["epochs"] > 0.5
