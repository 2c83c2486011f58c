"""EvolutionarySynthesisPruner: physical removal, determinism, budgets, bad input."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from squish_plugin import (
    EvolutionarySynthesisPruner,
    InvalidArgumentError,
    SynthesisConfig,
    UntraceableModelError,
    squeezenet1_1_ancestor,
)
from squish_plugin.synthesis.surgery import Surgeon

SMALL = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tv(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, num_classes=10)
    # give BatchNorm non-trivial statistics so the equality check means something
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            g = torch.Generator().manual_seed(m.num_features)
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    return model.eval()


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet18", "mobilenet_v2", "regnet_x_400mf"])
def test_physical_pruning_equals_zeroed_parent(name):
    """Removing channels gives the same outputs as zeroing them in the parent."""
    model = _tv(name)
    pruner = EvolutionarySynthesisPruner(model, env=0.6, example_inputs=SMALL, seed=1)
    plan = pruner.sample()
    child = pruner.offspring()
    masked = copy.deepcopy(model)
    Surgeon(masked, SMALL).zero(plan)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (child.eval()(x) - masked.eval()(x)).abs().max().item()
    assert diff <= 1e-5
    assert _params(child) < _params(model)
    # and the removal is physical: fewer channels in the first prunable layer's weight
    first = pruner.layers[0]
    assert dict(child.named_modules())[first.name].weight.shape[0] == int(plan[first.name].sum())


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1", "resnet18", "mobilenet_v2"])
def test_any_torchvision_cnn_is_pruned_and_runs(name):
    """Works for any CNN torch-pruning can trace; the classifier keeps its outputs."""
    model = _tv(name)
    child = EvolutionarySynthesisPruner(model, env=0.8, example_inputs=SMALL).step()
    assert child(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert _params(child) < _params(_tv(name))


def test_fire_concat_and_next_squeeze_follow():
    """Pruning expand1x1/expand3x3 shrinks the next squeeze's and conv10's inputs."""
    model = squeezenet1_1_ancestor(weights=None)
    child = EvolutionarySynthesisPruner(model, env=0.5, example_inputs=SMALL).step()
    fires = [m for m in child.features if isinstance(m, torchvision.models.squeezenet.Fire)]
    for fire, nxt in zip(fires, fires[1:]):
        width = fire.expand1x1.out_channels + fire.expand3x3.out_channels
        assert nxt.squeeze.in_channels == width
        assert fire.expand1x1.in_channels == fire.expand3x3.in_channels == fire.squeeze.out_channels
    conv10 = child.classifier[1]
    assert conv10.in_channels == fires[-1].expand1x1.out_channels + fires[-1].expand3x3.out_channels
    assert conv10.out_channels == 10


def test_step_prunes_in_place_offspring_keeps_parent():
    """step() shrinks the pruner's model; offspring() leaves the parent intact."""
    model = squeezenet1_1_ancestor(weights=None)
    before = _params(model)
    pruner = EvolutionarySynthesisPruner(model, env=0.9, example_inputs=SMALL)
    child = pruner.offspring()
    assert _params(model) == before and pruner.generation == 0
    assert _params(child) < before
    same = pruner.step()
    assert same is model and pruner.generation == 1
    assert _params(model) == _params(child)  # offspring() previews the next step()


def test_interactive_step_yields_groups():
    """step(interactive=True) yields torch-pruning groups the caller prunes."""
    model = squeezenet1_1_ancestor(weights=None)
    pruner = EvolutionarySynthesisPruner(model, env=0.7, example_inputs=SMALL)
    expected = _params(pruner.offspring())
    groups = 0
    for group in pruner.step(interactive=True):
        assert isinstance(group, tp.Group)
        group.prune()
        groups += 1
    assert groups > 0 and _params(model) == expected
    assert model(SMALL).shape == (1, 10)


def test_same_seed_same_offspring_other_seed_differs():
    a = EvolutionarySynthesisPruner(squeezenet1_1_ancestor(weights=None), seed=7).offspring()
    b = EvolutionarySynthesisPruner(squeezenet1_1_ancestor(weights=None), seed=7).offspring()
    c = EvolutionarySynthesisPruner(squeezenet1_1_ancestor(weights=None), seed=8).offspring()
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(sa[k].shape != sc[k].shape for k in sa)


_CHILD_SCRIPT = """
import hashlib, json, torch
from squish_plugin import EvolutionarySynthesisPruner, squeezenet1_1_ancestor
p = EvolutionarySynthesisPruner(squeezenet1_1_ancestor(weights=None), env=0.8, seed=11)
p.step(); child = p.step()
h = hashlib.sha256()
for k, v in sorted(child.state_dict().items()):
    h.update(k.encode()); h.update(v.numpy().tobytes())
print(json.dumps([h.hexdigest(), [m.out_channels for m in child.modules() if isinstance(m, torch.nn.Conv2d)]]))
"""


def test_same_seed_same_offspring_across_processes():
    """Two fresh processes with different PYTHONHASHSEED synthesise identical offspring."""
    outs = []
    for hashseed in ("1", "987"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed, OMP_NUM_THREADS="1")
        run = subprocess.run([sys.executable, "-c", _CHILD_SCRIPT], env=env, capture_output=True, text=True, check=True)
        outs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]


def test_budget_mode_keeps_env_of_parameters_on_pretrained_ancestor():
    """mode='budget', env=0.9: mean offspring size over 10 seeds is 0.90 +/- 0.03."""
    model = squeezenet1_1_ancestor(weights="imagenet")
    pruner = EvolutionarySynthesisPruner(model, env=0.9, config=SynthesisConfig(mode="budget"))
    parent = _params(model)
    ratios = [_params(pruner.offspring(seed=s)) / parent for s in range(10)]
    assert abs(sum(ratios) / 10 - 0.9) <= 0.03, ratios


def test_budget_mode_on_macs():
    """resource='macs' budgets multiply-accumulates instead of parameters."""
    from squish_plugin import model_stats

    model = squeezenet1_1_ancestor(weights="imagenet")
    cfg = SynthesisConfig(mode="budget", resource="macs")
    pruner = EvolutionarySynthesisPruner(model, env=0.7, config=cfg)
    parent = model_stats(model)["macs"]
    ratios = [model_stats(pruner.offspring(seed=s))["macs"] / parent for s in range(4)]
    assert abs(sum(ratios) / 4 - 0.7) <= 0.05, ratios


def test_resource_model_is_exact_for_a_given_draw():
    """The parameter polynomial, at a draw's kept fractions, equals the child's count."""
    model = _tv("resnet18")
    pruner = EvolutionarySynthesisPruner(model, env=0.5, example_inputs=SMALL)
    plan = pruner.sample()
    rm = Surgeon(model, SMALL).resource_model("params")
    fractions = torch.tensor([plan[layer.name].double().mean() for layer in pruner.layers])
    assert rm(fractions) == pytest.approx(_params(pruner.offspring()), abs=0.5)


def test_fifteen_generations_still_run():
    """15 chained steps with env=0.9 and no training leave a working network."""
    model = squeezenet1_1_ancestor(weights="imagenet")
    pruner = EvolutionarySynthesisPruner(model, env=0.9, example_inputs=SMALL)
    for _ in range(15):
        pruner.step()
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)
    assert 0.1 < _params(model) / 727626 < 0.4  # ~0.9**15 = 0.21
    assert all(layer.width >= 1 for layer in pruner.layers)


def test_paper_mode_literally_halves_parameters():
    """mode='paper' keeps each cluster with env*P: about half the parameters at env=0.9."""
    model = squeezenet1_1_ancestor(weights="imagenet")
    pruner = EvolutionarySynthesisPruner(model, config=SynthesisConfig(env=0.9, mode="paper"))
    probs = torch.cat(pruner.probabilities())
    assert float(probs.max()) == pytest.approx(0.9)
    ratio = _params(pruner.offspring()) / 727626
    assert 0.3 < ratio < 0.75


def test_ignored_layers_are_left_alone():
    model = squeezenet1_1_ancestor(weights=None)
    first = model.features[0]
    pruner = EvolutionarySynthesisPruner(model, env=0.5, ignored_layers=[first], example_inputs=SMALL)
    pruner.step()
    assert first.out_channels == 64 and model.classifier[1].out_channels == 10


def test_a_container_in_ignored_layers_protects_every_layer_inside_it():
    """`ignored_layers=[model.layer4]` protects the whole stage, as torch-pruning expands
    containers to their submodules (issue #26); so across generations too."""
    model = torchvision.models.resnet18(num_classes=10)
    before = {n: m.out_channels for n, m in model.layer4.named_modules() if isinstance(m, nn.Conv2d)}
    pruner = EvolutionarySynthesisPruner(model, env=0.5, ignored_layers=[model.layer4], example_inputs=SMALL)
    pruner.step()
    pruner.step()
    after = {n: m.out_channels for n, m in model.layer4.named_modules() if isinstance(m, nn.Conv2d)}
    assert after == before
    assert model.layer1[0].conv1.out_channels < 64  # the rest is pruned


def test_parameters_in_ignored_layers_are_accepted_as_torch_pruning_does():
    """An nn.Parameter in ignored_layers is torch-pruning's ignored parameter, not an error;
    what is neither a module nor a parameter of the model is named."""
    model = torchvision.models.resnet18(num_classes=10)
    pruner = EvolutionarySynthesisPruner(model, env=0.8, ignored_layers=[model.fc.bias], example_inputs=SMALL)
    pruner.step()
    assert pruner.offspring()(SMALL).shape == (1, 10)
    with pytest.raises(InvalidArgumentError, match="not a submodule"):
        EvolutionarySynthesisPruner(model, ignored_layers=[nn.Conv2d(3, 3, 1)], example_inputs=SMALL)
    with pytest.raises(InvalidArgumentError, match="not one of the model's parameters"):
        EvolutionarySynthesisPruner(model, ignored_layers=[nn.Parameter(torch.zeros(3))], example_inputs=SMALL)


def test_torch_pruning_positional_order_is_accepted():
    """`EvolutionarySynthesisPruner(model, example_inputs, importance)` works as torch-pruning's
    pruners do (issue #26); a number in example_inputs' place names the keyword to write."""
    model = squeezenet1_1_ancestor(weights=None)
    pruner = EvolutionarySynthesisPruner(model, SMALL, tp.importance.GroupMagnitudeImportance(p=1), env=0.8)
    assert pruner.offspring()(SMALL).shape == (1, 10)
    with pytest.raises(InvalidArgumentError, match=r"env=0\.9"):
        EvolutionarySynthesisPruner(model, 0.9)


def test_a_chain_of_steps_is_the_lineage_evolve_draws_from_the_same_seed(tmp_path):
    """step() draws generation g from the key evolve() gives offspring 0 of generation g,
    so without training between generations the two give the same widths (issue #26)."""
    from squish_plugin import evolve
    from squish_plugin.study.engine import layer_widths

    model = squeezenet1_1_ancestor(weights="imagenet")
    lineage = evolve(
        copy.deepcopy(model),
        train_fn=lambda m, ctx: None,
        eval_fn=lambda m: {"top1": 0.0, "top5": 0.0},
        run_dir=tmp_path,
        generations=2,
        env=0.8,
        seed=5,
        example_inputs=SMALL,
    )
    pruner = EvolutionarySynthesisPruner(model, SMALL, env=0.8, seed=5)
    for record in lineage.records[1:]:
        pruner.step()
        assert layer_widths(model) == record["widths"]


class _TwoInputs(nn.Module):
    """A model with two image inputs (as multi-input and detection models take them)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(3, 16, 3)
        self.c, self.fc = nn.Conv2d(16, 32, 3), nn.Linear(32, 10)

    def forward(self, x, y):
        h = torch.relu(self.c(torch.relu(self.a(x) + self.b(y))))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("how", ["tuple", "list", "dict", "forward_fn"])
def test_example_inputs_as_torch_pruning_takes_them(how):
    """A tuple or list (positional), a dict (keyword) or a forward_fn runs a multi-input
    model, as torch-pruning's example_inputs do (issue #26)."""
    x, y = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    inputs = {"tuple": (x, y), "list": [x, y], "dict": {"x": x, "y": y}, "forward_fn": {"first": x, "second": y}}
    forward_fn = (lambda m, inp: m(inp["first"], inp["second"])) if how == "forward_fn" else None
    model = _TwoInputs()
    pruner = EvolutionarySynthesisPruner(model, inputs[how], env=0.5, forward_fn=forward_fn)
    pruner.step()
    assert model.a.out_channels == model.b.out_channels < 16  # coupled by the sum, cut together
    assert model(x, y).shape == (2, 10)


def test_example_inputs_of_another_kind_are_named():
    with pytest.raises(InvalidArgumentError, match="tuple or list of inputs, or a dict"):
        EvolutionarySynthesisPruner(_TwoInputs(), "images", env=0.5)


def test_the_dependency_graph_is_exposed_as_DG():
    """torch-pruning users inspect groups on `pruner.DG`; it follows the model after a step."""
    model = squeezenet1_1_ancestor(weights=None)
    pruner = EvolutionarySynthesisPruner(model, env=0.7, example_inputs=SMALL)
    assert isinstance(pruner.DG, tp.DependencyGraph)
    first = pruner.DG
    pruner.step()
    assert pruner.DG is not first and pruner.DG.model is model


def test_group_importance_is_pluggable():
    """A torch-pruning Importance scores the clusters instead of the filter L1."""
    model = squeezenet1_1_ancestor(weights="imagenet")
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = EvolutionarySynthesisPruner(model, env=0.9, importance=imp)
    default = EvolutionarySynthesisPruner(model, env=0.9)
    assert any(not torch.allclose(a, b) for a, b in zip(pruner.strengths(), default.strengths()))
    assert pruner.offspring()(SMALL).shape == (1, 10)


@pytest.mark.parametrize("env", [0, -0.5, 1.01, float("nan"), "high"])
def test_env_out_of_range_is_refused(env):
    with pytest.raises(InvalidArgumentError, match="env must be"):
        EvolutionarySynthesisPruner(squeezenet1_1_ancestor(weights=None), env=env)


def test_not_a_module_is_refused():
    with pytest.raises(InvalidArgumentError, match="torch.nn.Module"):
        EvolutionarySynthesisPruner("squeezenet", env=0.9)


def test_wrong_example_inputs_are_refused():
    with pytest.raises(InvalidArgumentError, match=r"example_inputs of shape \(1, 1, 32, 32\)"):
        EvolutionarySynthesisPruner(squeezenet1_1_ancestor(weights=None), example_inputs=torch.zeros(1, 1, 32, 32))


def _fail_third_group(monkeypatch):
    """torch-pruning fails on the third group it prunes; returns the real Group.prune."""
    real = tp.Group.prune
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(self, *a, **k)

    monkeypatch.setattr(tp.Group, "prune", flaky)
    return real


def test_failed_surgery_restores_the_model(monkeypatch):
    """If torch-pruning fails half-way, nothing is left half-pruned."""
    model = squeezenet1_1_ancestor(weights=None).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out_before = model(SMALL)
    pruner = EvolutionarySynthesisPruner(model, env=0.5, example_inputs=SMALL)
    _fail_third_group(monkeypatch)
    with pytest.raises(UntraceableModelError, match="model restored"):
        pruner.step()
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(model(SMALL), out_before)


def test_trace_does_not_disturb_batchnorm_statistics():
    """Building the graph runs forward in eval mode: running stats stay put."""
    model = _tv("resnet18").train()
    before = model.bn1.running_mean.clone()
    EvolutionarySynthesisPruner(model, env=0.9, example_inputs=SMALL)
    assert torch.equal(model.bn1.running_mean, before) and model.training


def test_pruner_works_under_no_grad_and_inference_mode():
    """Users shrink models inside `torch.no_grad()` / `torch.inference_mode()`: the pruner
    traces with gradients on itself, and the child's parameters stay trainable tensors."""
    for mode in (torch.no_grad, torch.inference_mode):
        model = squeezenet1_1_ancestor(weights=None)
        with mode():
            pruner = EvolutionarySynthesisPruner(model, env=0.8, example_inputs=torch.zeros(1, 3, 64, 64))
            plan = pruner.sample()
            child = pruner.offspring()
            pruner.step()
        assert pruner.generation == 1 and _params(model) == _params(child) < 727_626
        assert all(plan[layer].numel() > 0 for layer in plan)
        assert all(p.requires_grad and not p.is_inference() for p in model.parameters())
        assert pruner.step() is model and pruner.generation == 2  # the graph followed the model


def test_model_built_inside_inference_mode_is_one_sentence():
    """Tensors made inside inference_mode can never be traced: say so, change nothing."""
    with torch.inference_mode():
        model = squeezenet1_1_ancestor(weights=None)
        with pytest.raises(UntraceableModelError, match="inside torch.inference_mode"):
            EvolutionarySynthesisPruner(model, env=0.8, example_inputs=SMALL)


def test_failed_prune_leaves_model_and_pruner_as_before(monkeypatch):
    """After torch-pruning fails half-way, model *and* pruner are as before (generation,
    graph, the next seed): the next step() works and equals an undisturbed pruner's."""
    model = squeezenet1_1_ancestor(weights=None).eval()
    conv = model.features[0]
    pruner = EvolutionarySynthesisPruner(model, env=0.5, example_inputs=SMALL)
    real = _fail_third_group(monkeypatch)
    with pytest.raises(UntraceableModelError, match="model restored"):
        pruner.step()
    monkeypatch.setattr(tp.Group, "prune", real)
    assert pruner.generation == 0 and model.features[0] is conv  # the user's references stay valid
    assert [layer.width for layer in pruner.layers] == [layer.module.weight.shape[0] for layer in pruner.layers]
    pruner.step()
    undisturbed = EvolutionarySynthesisPruner(squeezenet1_1_ancestor(weights=None), env=0.5, example_inputs=SMALL)
    expected = undisturbed.step().state_dict()
    assert pruner.generation == 1
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_interactive_generator_closed_early_leaves_a_consistent_pruner():
    """The bookkeeping follows what was pruned: one group pruned then the generator closed
    counts a generation and re-traces; a generator closed with nothing pruned counts none."""
    model = squeezenet1_1_ancestor(weights=None)
    pruner = EvolutionarySynthesisPruner(model, env=0.7, example_inputs=SMALL)
    groups = pruner.step(interactive=True)
    next(groups)
    groups.close()
    assert pruner.generation == 0
    groups = pruner.step(interactive=True)
    next(groups).prune()
    groups.close()
    assert pruner.generation == 1
    assert [layer.width for layer in pruner.layers] == [layer.module.weight.shape[0] for layer in pruner.layers]
    assert pruner.step() is model and pruner.generation == 2
    assert model(SMALL).shape == (1, 10)


def test_grouped_convolutions_keep_their_width_and_the_rest_is_pruned():
    """regnet_x_400mf's grouped 3x3 convs (torch-pruning cannot cut channel groups) stay
    whole with everything coupled to them; the other families are pruned (that the child
    equals its zeroed parent: test_physical_pruning_equals_zeroed_parent)."""
    model = _tv("regnet_x_400mf")
    pruner = EvolutionarySynthesisPruner(model, env=0.7, example_inputs=SMALL, seed=1)
    child = pruner.offspring()
    assert pruner.surgeon.grouped and _params(child) < _params(model)
    before = {n: m.in_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    after = {n: m.in_channels for n, m in child.named_modules() if n in before}
    assert after == before
    grouped = [m for m in child.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    assert grouped and all(m.in_channels % m.groups == 0 for m in grouped)


def test_unwrapped_parameters_are_passed_to_torch_pruning():
    """ConvNeXt's layer scales belong to no Conv/Linear/BatchNorm: given as
    unwrapped_parameters they are pruned with their channels, without torch-pruning's warning."""
    import warnings

    model = _tv("convnext_tiny")
    scales = [(m.layer_scale, 0) for m in model.modules() if hasattr(m, "layer_scale")]
    x = torch.zeros(1, 3, 32, 32)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pruner = EvolutionarySynthesisPruner(model, env=0.8, example_inputs=x, unwrapped_parameters=scales)
        pruner.step()
        pruner.step()
    assert not [w for w in seen if "nwrapped parameters" in str(w.message)]
    assert pruner.generation == 2 and model(x).shape == (1, 10)
    blocks = [m for m in model.modules() if hasattr(m, "layer_scale")]
    assert all(b.layer_scale.shape[0] == b.block[0].out_channels for b in blocks)
    with pytest.raises(InvalidArgumentError, match="unwrapped_parameters"):
        EvolutionarySynthesisPruner(_tv("convnext_tiny"), example_inputs=x, unwrapped_parameters=[scales[0][0]])
