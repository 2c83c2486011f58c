"""`importance=` is the one knob for cluster strength (issue #28): a name, a torch-pruning-style
callable, or DataStrengths measured on images on the model as it is at each draw."""

from __future__ import annotations

import pytest
import torch
import torchvision

from squish_plugin import EvolutionarySynthesisPruner
from squish_plugin.errors import InvalidArgumentError
from squish_plugin.study.engine import EvolutionConfig
from squish_plugin.synthesis.strengths import DataStrengths, data_strengths

INPUTS = torch.zeros(1, 3, 64, 64)


def _model():
    torch.manual_seed(0)
    return torchvision.models.squeezenet1_1(num_classes=10)


def test_data_strengths_are_measured_on_the_model_as_it_is_at_each_draw():
    batch = (torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3]))
    calls = []
    importance = DataStrengths(lambda: calls.append(1) or [batch], kind="taylor")
    model = _model()
    pruner = EvolutionarySynthesisPruner(model, INPUTS, importance, env=0.8, seed=3)
    expected = data_strengths(_model(), [batch], kind="taylor")
    got = dict(zip((layer.name for layer in pruner.layers), pruner.strengths()))
    assert torch.allclose(got["features.3.squeeze"], expected["features.3.squeeze"].abs())
    pruner.probabilities()
    assert len(calls) == 1  # measured once for the model as it is, however often it is drawn from
    pruner.step()
    widths = {layer.name: layer.width for layer in pruner.layers}
    after = pruner.strengths()  # the pruned model: measured again, at its widths
    assert len(calls) == 2 and [s.numel() for s in after] == list(widths.values())
    taylor = EvolutionarySynthesisPruner(_model(), INPUTS, DataStrengths(lambda: [batch]), env=0.8, seed=3).sample(7)
    l1 = EvolutionarySynthesisPruner(_model(), INPUTS, "l1", env=0.8, seed=3).sample(7)
    assert any(not torch.equal(taylor[k], l1[k]) for k in taylor)  # the strengths drive the draw


def test_a_data_strength_by_name_is_refused_with_the_way_to_ask_for_it():
    with pytest.raises(InvalidArgumentError, match=r"importance=DataStrengths\(batches, kind\)"):
        EvolutionarySynthesisPruner(_model(), INPUTS, "taylor")
    with pytest.raises(InvalidArgumentError, match="data-driven strength must be one of"):
        DataStrengths(lambda: [], kind="hessian")


def test_strength_fn_is_deprecated_in_favour_of_importance():
    with pytest.warns(DeprecationWarning, match="importance=DataStrengths"):
        EvolutionConfig(strength_fn=lambda parent: {})


def test_the_study_hands_taylor_strengths_to_the_engine_as_importance(tmp_path):
    """The runner no longer turns `importance: taylor` into 'l1' beside a separate strength_fn."""
    from squish_plugin.study.recipe import validate_recipe
    from squish_plugin.study.runner import evolution_config

    recipe = validate_recipe({"name": "t", "data": {"root": str(tmp_path)}})
    strengths = DataStrengths(lambda: [], kind="taylor")
    assert evolution_config(recipe, None, importance=strengths).importance is strengths
    plain = validate_recipe({"name": "t", "data": {"root": str(tmp_path)}, "evolution": {"importance": "l2"}})
    assert evolution_config(plain, None).importance == "l2"
