"""The NNI face: our pruner as an NNI 3 Pruner, and physical application of any NNI masks."""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

pytest.importorskip("nni")

from squish_plugin import InvalidArgumentError, MissingExtraError  # noqa: E402
from squish_plugin.nni import EvolutionarySynthesisPruner, apply_masks  # noqa: E402

X1 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
X = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _model(name):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, num_classes=10).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            g = torch.Generator().manual_seed(m.num_features)
            m.running_mean.normal_(0, 0.1, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    return model


CONFIGS = {
    "squeezenet1_1": [{"op_types": ["Conv2d"], "exclude_op_names": ["classifier.1"]}],
    "resnet18": [{"op_types": ["Conv2d", "BatchNorm2d"]}],
}


def _ours(model, name, seed=0, config=None):
    pruner = EvolutionarySynthesisPruner(model, config or CONFIGS[name], env=0.7, seed=seed, example_inputs=X1)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return masks


@torch.no_grad()
def _masked(model, masks):
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    for name, targets in masks.items():
        for target, mask in targets.items():
            if mask is not None:  # NNI lists a None mask for a missing bias
                getattr(modules[name], target).mul_(mask)
    return masked


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet18"])
def test_our_masks_applied_physically_equal_the_masked_model(name):
    """compress() masks + apply_masks: same outputs as the masked model, fewer parameters."""
    model = _model(name)
    masks = _ours(model, name)
    masked = _masked(model, masks)
    small = apply_masks(copy.deepcopy(model), masks, X1)
    with torch.no_grad():
        assert (small(X) - masked(X)).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_masks_are_nni_format_and_classifier_untouched():
    masks = _ours(_model("squeezenet1_1"), "squeezenet1_1")
    assert "classifier.1" not in masks
    w = masks["features.0"]["weight"]
    assert w.shape == (64, 3, 3, 3) and set(w.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks["features.0"]["bias"], w[:, 0, 0, 0])


def test_config_list_exclusions_respected():
    """exclude_op_names and op_names decide which layers are synthesised."""
    config = [{"op_types": ["Conv2d"], "exclude_op_names": ["classifier.1", "features.0", "features.3.squeeze"]}]
    masks = _ours(_model("squeezenet1_1"), "squeezenet1_1", config=config)
    assert "features.0" not in masks and "features.3.squeeze" not in masks and "features.3.expand1x1" in masks
    only = [{"op_names": ["features.12.expand3x3"]}]
    masks = _ours(_model("squeezenet1_1"), "squeezenet1_1", config=only)
    assert sorted(masks) == ["features.12.expand3x3"]
    small = apply_masks(_model("squeezenet1_1"), masks, X1)
    assert small.features[0].out_channels == 64
    assert small.features[12].expand3x3.out_channels == int(masks["features.12.expand3x3"]["bias"].sum())


_SCRIPT = """
import hashlib, json, torch, torchvision
from squish_plugin.nni import EvolutionarySynthesisPruner
torch.manual_seed(0)
m = torchvision.models.squeezenet1_1(num_classes=10)
p = EvolutionarySynthesisPruner(m, [{"op_types": ["Conv2d"], "exclude_op_names": ["classifier.1"]}],
                                env=0.7, seed=3, example_inputs=torch.zeros(1, 3, 64, 64))
_, masks = p.compress()
h = hashlib.sha256()
for name in sorted(masks):
    for t in sorted(masks[name]):
        h.update(name.encode()); h.update(masks[name][t].numpy().tobytes())
print(json.dumps(h.hexdigest()))
"""


def test_same_seed_same_masks_across_processes():
    """NNI iterates in hash order; our masks do not depend on it."""
    outs = []
    for hashseed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed, OMP_NUM_THREADS="1")
        run = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
        outs.append(run.stdout.strip().splitlines()[-1])
    assert outs[0] == outs[1]


def test_different_seeds_different_masks():
    a = _ours(_model("squeezenet1_1"), "squeezenet1_1", seed=1)
    b = _ours(_model("squeezenet1_1"), "squeezenet1_1", seed=2)
    assert any(not torch.equal(a[k]["weight"], b[k]["weight"]) for k in a)


@pytest.mark.parametrize(
    "pruner_name, name",
    [
        ("L1NormPruner", "squeezenet1_1"),
        ("L2NormPruner", "squeezenet1_1"),
        ("FPGMPruner", "squeezenet1_1"),
        ("L1NormPruner", "resnet18"),
    ],
)
def test_builtin_nni_masks_apply_physically(pruner_name, name):
    """NNI's own pruners' masks become a physically smaller network (equivalent on
    SqueezeNet; on resnet18 their conv-only masks leave BatchNorm shifts that are dropped,
    as ModelSpeedup drops them, with a warning that states the difference)."""
    from nni.compression import pruning

    model = _model(name)
    excl = ["classifier.1"] if name == "squeezenet1_1" else ["fc"]
    pruner = getattr(pruning, pruner_name)(
        model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "exclude_op_names": excl}]
    )
    _, masks = pruner.compress()
    pruner.unwrap_model()
    before = sum(p.numel() for p in model.parameters())
    if name == "resnet18":  # conv-only masks: the BatchNorm shifts of removed channels are dropped, and said so
        with pytest.warns(UserWarning, match="BatchNorms"):
            small = apply_masks(copy.deepcopy(model), masks, X1)
    else:
        small = apply_masks(copy.deepcopy(model), masks, X1)
    assert sum(p.numel() for p in small.parameters()) < 0.6 * before
    assert small(X).shape == (4, 10)


def test_taylor_masks_apply_physically():
    import nni
    from nni.compression import TorchEvaluator
    from nni.compression.pruning import TaylorPruner

    model = _model("squeezenet1_1")
    batches = [(X, torch.tensor([0, 1, 2, 3]))] * 2

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for step, batch in enumerate(batches * (max_steps or 1)):
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()
            if max_steps and step + 1 >= max_steps:
                return

    evaluator = TorchEvaluator(
        training_func,
        nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01),
        lambda b, m: F.cross_entropy(m(b[0]), b[1]),
    )
    pruner = TaylorPruner(
        model,
        [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "exclude_op_names": ["classifier.1"]}],
        evaluator,
        training_steps=2,
    )
    _, masks = pruner.compress()
    pruner.unwrap_model()
    small = apply_masks(model.eval(), masks, X1)
    assert sum(p.numel() for p in small.parameters()) < 400_000


def test_unstructured_masks_are_refused_by_the_equality_check():
    """A mask that zeroes part of a filter cannot become a smaller network: the
    elementwise zeros stay and nothing is removed that would change the outputs."""
    model = _model("squeezenet1_1")
    mask = torch.ones(64, 3, 3, 3)
    mask[:, :, 0, 0] = 0
    small = apply_masks(copy.deepcopy(model), {"features.0": {"weight": mask}}, X1)
    assert small.features[0].out_channels == 64  # nothing fully masked, nothing removed


def test_bad_masks_are_named():
    with pytest.raises(InvalidArgumentError, match="nope"):
        apply_masks(_model("squeezenet1_1"), {"nope": {"weight": torch.ones(1)}}, X1)
    with pytest.raises(InvalidArgumentError, match="shape"):
        apply_masks(_model("squeezenet1_1"), {"features.0": {"weight": torch.ones(3)}}, X1)


def test_missing_nni_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nni", None)
    monkeypatch.setitem(sys.modules, "nni.compression", None)
    monkeypatch.setitem(sys.modules, "nni.compression.base", None)
    monkeypatch.setitem(sys.modules, "nni.compression.base.compressor", None)
    monkeypatch.delitem(sys.modules, "squish_plugin.nni")
    monkeypatch.delitem(sys.modules, "squish_plugin.synthesis.nni")
    with pytest.raises(MissingExtraError, match=r"squish-plugin\[nni\]"):
        importlib.import_module("squish_plugin.nni")
    monkeypatch.undo()
    importlib.import_module("squish_plugin.nni")


def _masked_copy(model, masks):
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, targets in masks.items():
            for target, mask in targets.items():
                tensor = getattr(modules[name], target, None)
                if tensor is not None:
                    tensor.mul_(mask)
    return masked


def test_coupled_members_get_their_own_indices_densenet():
    """DenseNet concatenates every layer's output into the next BatchNorms: with BatchNorm2d
    selected, each coupled member is masked at its *own* channel indices (not the root's),
    so the masked network equals the physically pruned one."""
    model = _model("densenet121")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    config_list = [{"op_types": ["Conv2d", "BatchNorm2d"], "exclude_op_names": ["classifier"]}]
    pruner = EvolutionarySynthesisPruner(model, config_list, env=0.8, example_inputs=x, seed=0)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and n in masks]
    assert bns and any(masks[n]["weight"].numel() != masks[n]["weight"].sum() for n in bns)
    masked = _masked_copy(model, masks)
    small = apply_masks(model, masks, x)
    batch = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (small(batch) - masked(batch)).abs().max().item() <= 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())


def test_apply_masks_and_the_nni_pruner_work_under_no_grad():
    """NNI users build masks and shrink models inside torch.no_grad(): it just works."""
    model = _model("squeezenet1_1")
    config_list = [{"op_types": ["Conv2d"], "exclude_op_names": ["classifier.1"]}]
    with torch.no_grad():
        pruner = EvolutionarySynthesisPruner(model, config_list, env=0.8, example_inputs=X1)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        small = apply_masks(model, masks, X1)
    assert sum(p.numel() for p in small.parameters()) < 727_626
    assert all(p.requires_grad for p in small.parameters())


def _kept(masks: dict) -> float:
    """The fraction of the masked weights kept."""
    total = sum(t["weight"].numel() for t in masks.values())
    return sum(float(t["weight"].sum()) for t in masks.values()) / total


def _nni_quickstart(model, config_list, *args, **kwargs):
    pruner = EvolutionarySynthesisPruner(model, config_list, *args, example_inputs=X1, **kwargs)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return pruner, masks


def test_sparse_ratio_sets_env_when_env_is_not_given():
    """NNI's quick start with our pruner swapped in: sparse_ratio 0.3 / 0.5 / 0.8 keep less
    and less, as NNI's L1 does (issue #26: they gave identical masks before)."""
    kept = []
    for ratio in (0.3, 0.5, 0.8):
        config = [{"op_types": ["Conv2d"], "exclude_op_names": ["conv1"], "sparse_ratio": ratio}]
        pruner, masks = _nni_quickstart(_model("resnet18"), config)
        assert pruner.synthesis.env == pytest.approx(1 - ratio)
        kept.append(_kept(masks))
    assert kept[0] > kept[1] > kept[2]


def test_nni_settings_are_honoured_or_refused_in_one_sentence():
    """max_sparse_ratio is max_drop, global_group_id one global multiplier, NNI 2's sparsity a
    ratio; sparse_threshold, another granularity and mixed ratios are refused in one
    sentence; evaluator comes third positionally, as in NNI."""
    base = {"op_types": ["Conv2d"], "exclude_op_names": ["conv1"]}
    pruner, _ = _nni_quickstart(_model("resnet18"), [{**base, "sparse_ratio": 0.5, "max_sparse_ratio": 0.6}], None)
    assert pruner.synthesis.max_drop == 0.6
    pruner, _ = _nni_quickstart(_model("resnet18"), [{**base, "sparse_ratio": 0.5, "global_group_id": 0}])
    assert pruner.synthesis.starvation == "global"
    pruner, _ = _nni_quickstart(_model("resnet18"), [{"op_types": ["Conv2d"], "sparsity": 0.4}])
    assert pruner.synthesis.env == pytest.approx(0.6)
    for bad, says in (
        ([{**base, "sparse_threshold": 0.1}], "sparse_threshold"),
        ([{**base, "sparse_ratio": 0.5, "granularity": "in_channel"}], "granularity"),
        ([{**base, "sparse_ratio": 0.5}, {"op_names": ["fc"], "sparse_ratio": 0.3}], "different sparse ratios"),
    ):
        with pytest.raises(InvalidArgumentError, match=says):
            EvolutionarySynthesisPruner(_model("resnet18"), bad, example_inputs=X1)


def test_a_partial_selection_keeps_env_of_what_it_selects():
    """op_names naming one layer: the budget is that layer's, so env 0.5 keeps about half of
    its 64 channels (it kept 2 when the whole network's budget fell on it)."""
    config = [{"op_names": ["layer1.0.conv1"]}]
    _, masks = _nni_quickstart(_model("resnet18"), config, env=0.5)
    kept = int(masks["layer1.0.conv1"]["weight"].flatten(1).any(1).sum())
    assert 20 <= kept <= 44


def _nni_l1(model, exclude):
    from nni.compression import pruning

    pruner = pruning.L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "exclude_op_names": exclude}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return masks


def test_apply_masks_never_cuts_a_layer_the_masks_leave_alone():
    """Excluded layers keep their channels (issue #26: resnet18's stem went 64 -> 47 with
    conv1 excluded); one masked layer coupled to unmasked ones removes nothing, and the
    result computes what the masked model computes."""
    model = _model("resnet18")
    masks = _nni_l1(copy.deepcopy(model), ["conv1", "fc"])
    with pytest.warns(UserWarning):
        small = apply_masks(copy.deepcopy(model), masks, X1)
    assert small.conv1.out_channels == 64 and small.layer1[0].conv2.out_channels == 64
    one = {"layer1.0.conv2": masks["layer1.0.conv2"]}
    small = apply_masks(copy.deepcopy(model), one, X1)
    assert [small.conv1.out_channels, small.layer1[0].conv2.out_channels, small.layer1[1].conv2.out_channels] == [
        64
    ] * 3
    assert torch.allclose(small.eval()(X), _masked(model, one).eval()(X), atol=1e-5)


def test_dropped_batchnorm_shifts_are_stated_refused_when_strict_and_exact_when_masked():
    """Conv-only masks on resnet18: the difference to the user's masked model is stated; with
    strict=True it is refused and the model keeps its masks whole; with the BatchNorms masked
    alike the removal is exact and silent."""
    model = _model("resnet18")
    masks = _nni_l1(copy.deepcopy(model), ["fc"])
    masked = _masked(model, masks).eval()
    with pytest.warns(UserWarning, match="of their range"):
        small = apply_masks(copy.deepcopy(model), masks, X1)
    assert (small.eval()(X1) - masked(X1)).abs().max() > 1e-4
    whole = copy.deepcopy(model)
    with pytest.raises(InvalidArgumentError, match="strict"):
        apply_masks(whole, masks, X1, strict=True)
    assert whole.conv1.out_channels == 64 and torch.allclose(whole.eval()(X), masked(X), atol=1e-5)
    modules = dict(model.named_modules())
    both = dict(masks)
    for name, targets in masks.items():
        bn = name.replace("conv", "bn") if "conv" in name else name.replace("downsample.0", "downsample.1")
        if bn != name and bn in modules:
            keep = targets["weight"].flatten(1).any(1).float()
            both[bn] = {"weight": keep, "bias": keep}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = apply_masks(copy.deepcopy(model), both, X1)
    assert sum(p.numel() for p in exact.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    assert torch.allclose(exact.eval()(X), _masked(model, both).eval()(X), atol=1e-4)


class _QuickStartNet(torch.nn.Module):
    """The model of NNI 3's pruning quick start (MNIST, 1 x 28 x 28)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 6, 5, 1), torch.nn.Conv2d(6, 16, 5, 1)
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(256, 120), torch.nn.Linear(120, 84), torch.nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = torch.flatten(F.max_pool2d(F.relu(self.conv2(x)), 2), 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def test_nni_quick_start_with_our_pruner_and_apply_masks():
    """NNI 3's quick start, our pruner swapped in for L1NormPruner and apply_masks for
    ModelSpeedup, end to end (the README's NNI section): the masks keep about half of the
    selected layers, and the smaller network computes what the masked one computes. Without
    example_inputs the error says what to pass."""
    torch.manual_seed(0)
    model = _QuickStartNet().eval()
    config_list = [{"op_types": ["Linear", "Conv2d"], "exclude_op_names": ["fc3"], "sparse_ratio": 0.5}]
    with pytest.raises(InvalidArgumentError, match=r"example_inputs=.*torch.zeros\(1, 1, 28, 28\)"):
        EvolutionarySynthesisPruner(model, config_list)
    dummy = torch.rand(3, 1, 28, 28)
    pruner = EvolutionarySynthesisPruner(model, config_list, example_inputs=dummy)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    masked = _masked(model, masks).eval()
    before = sum(p.numel() for p in model.parameters())
    small = apply_masks(model, masks, dummy)
    assert sum(p.numel() for p in small.parameters()) < 0.75 * before
    assert small.fc3.out_features == 10
    assert torch.allclose(small(dummy), masked(dummy), atol=1e-5)


def test_size_tolerance_importance_and_unwrapped_parameters_reach_the_nni_draw():
    """config.size_tolerance repairs the NNI face's draw to the budget, importance changes
    the strengths, unwrapped_parameters reaches the surgery; a torch-pruning Importance is
    refused in one sentence (issue #26)."""
    import torch_pruning as tp

    from squish_plugin import SynthesisConfig

    config = [{"op_types": ["Conv2d"], "exclude_op_names": ["classifier.1"]}]

    def kept(**kw):
        pruner = EvolutionarySynthesisPruner(_model("squeezenet1_1"), config, example_inputs=X1, env=0.7, **kw)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        return apply_masks(_model("squeezenet1_1"), masks, X1)

    params = [
        sum(p.numel() for p in kept(seed=s, config=SynthesisConfig(size_tolerance=0.005)).parameters())
        for s in range(3)
    ]
    full = sum(p.numel() for p in _model("squeezenet1_1").parameters())
    assert all(abs(p / (0.7 * full) - 1) <= 0.02 for p in params)
    l1, l2 = kept(importance="l1"), kept(importance="l2")
    assert [m.out_channels for m in l1.modules() if isinstance(m, torch.nn.Conv2d)] != [
        m.out_channels for m in l2.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    assert kept(unwrapped_parameters=[]).features[0].out_channels < 64
    with pytest.raises(InvalidArgumentError, match="torch-pruning Importances"):
        EvolutionarySynthesisPruner(
            _model("squeezenet1_1"), config, example_inputs=X1, importance=tp.importance.GroupMagnitudeImportance()
        )
