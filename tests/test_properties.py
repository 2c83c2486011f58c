"""Property tests: any env, seed, floor and rounding gives a valid, smaller child."""

from __future__ import annotations

import copy

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squish_plugin import EvolutionarySynthesisPruner, SynthesisConfig, squeezenet1_1_ancestor

SMALL = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
PARENT = squeezenet1_1_ancestor(weights="imagenet").eval()
PARENT_PARAMS = sum(p.numel() for p in PARENT.parameters())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env=st.floats(min_value=1e-3, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
    min_channels=st.integers(min_value=1, max_value=16),
    round_to=st.one_of(st.none(), st.sampled_from([2, 4, 8])),
    mode=st.sampled_from(["paper", "budget"]),
)
def test_offspring_is_valid(env, seed, min_channels, round_to, mode):
    cfg = SynthesisConfig(env=env, mode=mode, min_channels=min_channels, round_to=round_to)
    model = copy.deepcopy(PARENT)
    widths = {}
    pruner = EvolutionarySynthesisPruner(model, config=cfg, seed=seed, example_inputs=SMALL)
    for layer in pruner.layers:
        widths[layer.name] = layer.width
    child = pruner.step()
    assert child(SMALL).shape == (1, 10)
    assert sum(p.numel() for p in child.parameters()) <= PARENT_PARAMS
    for layer in pruner.layers:  # re-traced after the step
        floor = min(min_channels, widths[layer.name])
        assert layer.width >= floor
        if round_to and layer.width != widths[layer.name]:
            assert layer.width % round_to == 0
    assert child.classifier[1].out_channels == 10
