"""A library call leaves the caller's thread count as it found it (issue #27, section 3)."""

from __future__ import annotations

from pathlib import Path

import torch

from squish_plugin.deploy.backends import bench_pytorch
from squish_plugin.deploy.latency.timers import pytorch_layer_timer
from squish_plugin.study import runner
from squish_plugin.study.recipe import load_recipe
from squish_plugin.threads import torch_threads

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_timers_and_backends_give_the_thread_count_back():
    torch.set_num_threads(1)
    geo = {"op": "conv", "kernel": (3, 3), "stride": (1, 1), "padding": (1, 1), "in_hw": (8, 8)}
    assert pytorch_layer_timer(batch=1, threads=2, warmup=0, runs=1)(geo, 4, 4) > 0
    assert torch.get_num_threads() == 1
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    bench_pytorch(model, name="tiny", batch=1, size=16, threads=2, warmup=0, runs=1)
    assert torch.get_num_threads() == 1


def test_run_study_trains_on_the_recipe_threads_and_gives_them_back(monkeypatch):
    inside = []
    monkeypatch.setattr(runner, "_run", lambda *a, **k: inside.append(torch.get_num_threads()))
    recipe = load_recipe(EXAMPLES / "quickstart.yaml", ["train.threads=2"])
    torch.set_num_threads(1)
    runner.run_study(recipe)
    assert inside == [2] and torch.get_num_threads() == 1


def test_torch_threads_restores_even_on_error():
    torch.set_num_threads(1)
    try:
        with torch_threads(2):
            assert torch.get_num_threads() == 2
            raise KeyError
    except KeyError:
        pass
    assert torch.get_num_threads() == 1
