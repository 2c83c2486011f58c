"""save_pruned / load_pruned: plain data, weights_only loading, atomic writes."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision

from squish_plugin import (
    CheckpointError,
    EvolutionarySynthesisPruner,
    load_pruned,
    persistence,
    save_pruned,
    squeezenet1_1_ancestor,
)

SMALL = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_round_trip_of_a_pruned_ancestor(tmp_path):
    """A pruned SqueezeNet-10 comes back with the same widths and outputs."""
    child = EvolutionarySynthesisPruner(squeezenet1_1_ancestor(weights="imagenet"), env=0.6).step()
    save_pruned(child, tmp_path / "gen01.pt")
    again = load_pruned(tmp_path / "gen01.pt")
    with torch.no_grad():
        assert torch.equal(child.eval()(SMALL), again.eval()(SMALL))
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in child.parameters())


def test_round_trip_of_torchvision_models_with_batchnorm(tmp_path):
    """Any torchvision CNN: give the builder once, or hand an unpruned instance to load."""
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    child = EvolutionarySynthesisPruner(model, env=0.5, example_inputs=SMALL[:1]).step().eval()
    save_pruned(child, tmp_path / "a.pt", arch={"builder": "torchvision:mobilenet_v2", "kwargs": {"num_classes": 10}})
    again = load_pruned(tmp_path / "a.pt").eval()
    assert torch.equal(child(SMALL), again(SMALL))
    save_pruned(child, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="pass model="):
        load_pruned(tmp_path / "b.pt")
    again = load_pruned(tmp_path / "b.pt", model=torchvision.models.mobilenet_v2(num_classes=10)).eval()
    assert torch.equal(child(SMALL), again(SMALL))


def test_loading_never_unpickles_objects(tmp_path, monkeypatch):
    """A file that pickles a module is refused instead of executed (weights_only)."""
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"format": persistence.FORMAT, "model": torchvision.models.squeezenet1_1()}, fh)
    with pytest.raises(CheckpointError, match="not a readable squish-plugin checkpoint"):
        load_pruned(evil)
    assert calls and all(k.get("weights_only") is True for k in calls)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_corrupt_file_is_refused(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_pruned(path)


def test_foreign_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a squish-plugin checkpoint"):
        load_pruned(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pruned(tmp_path / "nope.pt")


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "gen.pt"
    save_pruned(squeezenet1_1_ancestor(weights=None), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_pruned(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous file intact and no temp file behind."""
    path = tmp_path / "gen.pt"
    save_pruned(squeezenet1_1_ancestor(weights=None), path)
    before = path.read_bytes()

    def crash(obj, fh, *a, **k):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(squeezenet1_1_ancestor(weights=None, seed=9), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["gen.pt"]
