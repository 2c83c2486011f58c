"""The evolution engine with user callables: records, checkpoints, resume, selection."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from squish_plugin import CheckpointError, InvalidArgumentError, load_pruned, squeezenet1_1_ancestor
from squish_plugin.study.engine import evolve
from squish_plugin.study.plots import layer_order

SMALL = torch.zeros(1, 3, 64, 64)


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 10, (8,), generator=g)


def train_fn(model, ctx):
    """Two deterministic SGD steps on data drawn from ctx.seed."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(2):
        x, y = _batch(ctx.seed + i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def eval_fn(model):
    x, y = _batch(12345)
    with torch.no_grad():
        logits = model(x)
    return {"top1": float((logits.argmax(1) == y).float().mean() * 100), "top5": 0.0, "score": float(logits.sum())}


def _evolve(run_dir, **kw):
    kw.setdefault("generations", 3)
    return evolve(
        squeezenet1_1_ancestor(weights="imagenet"),
        train_fn=kw.pop("train", train_fn),
        eval_fn=eval_fn,
        run_dir=run_dir,
        env=0.8,
        seed=5,
        example_inputs=SMALL,
        **kw,
    )


def _essence(records):
    return [(r["generation"], r["seed"], r["params"], r["widths"], r["score"]) for r in records]


def test_records_and_checkpoints(tmp_path):
    """Each generation is recorded and checkpointed; sizes shrink; the lineage file is complete."""
    lineage = _evolve(tmp_path)
    recs = lineage.records
    assert [r["generation"] for r in recs] == [0, 1, 2, 3]
    assert recs[0]["params"] == 727_626 and recs[0]["parent"] is None
    assert all(a["params"] > b["params"] for a, b in zip(recs, recs[1:]))
    for key in ("size_mb", "macs", "widths", "top1", "top5", "train_seconds", "checkpoint"):
        assert key in recs[-1]
    on_disk = json.loads((tmp_path / "lineage.json").read_text())["records"]
    assert _essence(on_disk) == _essence(recs)
    child = load_pruned(tmp_path / recs[-1]["checkpoint"])
    assert sum(p.numel() for p in child.parameters()) == recs[-1]["params"]


def test_resume_after_interruption_reaches_same_lineage(tmp_path):
    """Killed during generation 2, resumed: the same lineage as an uninterrupted run."""
    full = _evolve(tmp_path / "full").records

    def dying(model, ctx):
        if ctx.generation == 2:
            raise KeyboardInterrupt
        train_fn(model, ctx)

    with pytest.raises(KeyboardInterrupt):
        _evolve(tmp_path / "cut", train=dying)
    partial = json.loads((tmp_path / "cut" / "lineage.json").read_text())["records"]
    assert [r["generation"] for r in partial] == [0, 1]
    resumed = _evolve(tmp_path / "cut", resume=True).records
    assert _essence(resumed) == _essence(full)
    # the widths plot lists the layers in model order either way (the file's keys are sorted)
    order = layer_order(resumed)
    assert order == layer_order(full) and order[0] == "features.0" and order[-1] == "classifier.1"


def test_resume_refuses_other_seed_and_foreign_lineage(tmp_path):
    _evolve(tmp_path, generations=0)
    with pytest.raises(InvalidArgumentError, match="same seed"):
        evolve(
            squeezenet1_1_ancestor(weights=None),
            train_fn=train_fn,
            eval_fn=eval_fn,
            run_dir=tmp_path,
            seed=6,
            resume=True,
            generations=1,
            example_inputs=SMALL,
        )
    (tmp_path / "lineage.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot resume"):
        _evolve(tmp_path, resume=True)


def test_natural_selection_keeps_fittest_offspring(tmp_path):
    """With K offspring per generation the one with the best fitness becomes the parent."""
    fitness_seen = []

    def fitness(model, ctx):
        value = -sum(p.numel() for p in model.parameters())  # prefer the smallest child
        fitness_seen.append((ctx.generation, value))
        return value

    recs = _evolve(tmp_path, generations=1, offspring_per_generation=3, fitness_fn=fitness).records
    cands = recs[1]["candidates"]
    assert len(cands) == 3
    assert recs[1]["params"] == min(c["params"] for c in cands)


def test_screening_trains_only_the_fittest_offspring(tmp_path):
    """screen_fn scores every offspring before training; only the best-scoring one is
    trained and becomes the parent (selection on a cheap proxy)."""
    trained = []

    def counting_train(model, ctx):
        trained.append((ctx.generation, ctx.candidate))
        train_fn(model, ctx)

    def screen(model, ctx):
        return -sum(p.numel() for p in model.parameters())  # prefer the smallest child

    recs = _evolve(tmp_path, generations=2, offspring_per_generation=4, screen_fn=screen, train=counting_train).records
    assert [g for g, _ in trained] == [0, 1, 2]  # one training per generation, not four
    for rec in recs[1:]:
        assert len(rec["screened"]) == 4
        assert rec["params"] == min(c["params"] for c in rec["screened"])
        assert rec["seed"] == max(rec["screened"], key=lambda c: c["screen"])["seed"]


def _stem_filters_at_training(run_dir, reinitialize):
    """The offspring's stem filters when its training starts, and its parent's."""
    seen = {}

    def watch(model, ctx):
        if ctx.generation == 1:
            seen["child"] = model.features[0].weight.detach().clone()
            seen["parent"] = ctx.parent.features[0].weight.detach().clone()
        train_fn(model, ctx)

    _evolve(run_dir, generations=1, train=watch, reinitialize=reinitialize)
    return seen["child"], seen["parent"]


def _inherited(child: torch.Tensor, parent: torch.Tensor) -> int:
    """How many of the child's filters are one of the parent's, unchanged."""
    return sum(any(torch.equal(c, p) for p in parent) for c in child)


def test_reinitialized_offspring_lose_inherited_weights(tmp_path):
    """reinitialize=True starts offspring from fresh weights (the heredity control): an inherited
    child's stem filters are its parent's kept filters, a reinitialised child's none of them."""
    child, parent = _stem_filters_at_training(tmp_path / "a", reinitialize=False)
    assert len(child) < len(parent) and _inherited(child, parent) == len(child)
    child, parent = _stem_filters_at_training(tmp_path / "b", reinitialize=True)
    assert _inherited(child, parent) == 0


@pytest.mark.parametrize(
    "kw, match",
    [({"generations": -1}, "generations"), ({"offspring_per_generation": 0}, "offspring"), ({"bogus": 1}, "bogus")],
)
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(InvalidArgumentError, match=match):
        _evolve(tmp_path, **kw)


def test_several_offspring_need_a_fitness_that_is_not_validation(tmp_path):
    """With K > 1 offspring and no fitness_fn (or screen_fn) the engine refuses in one
    sentence before anything is written, instead of choosing on eval_fn (the validation split)."""
    with pytest.raises(InvalidArgumentError, match="needs a fitness_fn"):
        _evolve(tmp_path / "run", generations=1, offspring_per_generation=3)
    assert not (tmp_path / "run").exists()


def test_resume_names_a_damaged_middle_checkpoint_before_training(tmp_path):
    """A truncated checkpoint of a middle generation stops --resume in one sentence naming it
    (it went unnoticed until export); nothing is changed."""
    _evolve(tmp_path, generations=2)
    middle = tmp_path / "checkpoints" / "gen_01.pt"
    middle.write_bytes(middle.read_bytes()[:200])
    lineage = (tmp_path / "lineage.json").read_bytes()
    with pytest.raises(CheckpointError, match=r"gen_01.pt' of generation 1 is missing or damaged"):
        _evolve(tmp_path, generations=3, resume=True)
    assert (tmp_path / "lineage.json").read_bytes() == lineage
