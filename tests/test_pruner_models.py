"""The pruner on the model families torch-pruning prunes: detectors' untraced heads, vision
transformers, and a step that traces once (issue #26, section 3)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from squish_plugin import EvolutionarySynthesisPruner, UntraceableModelError
from squish_plugin.synthesis import surgery


class _Proposals(nn.Module):
    """A detector in miniature: ``score`` runs on the features but its output only picks an
    index (like a region-proposal head in eval mode), so autograd never reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.score = nn.Conv2d(16, 1, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        features = self.body(torch.relu(self.stem(x)))
        pick = self.score(torch.relu(features)).flatten(1).argmax(1)
        return self.head(features.mean((2, 3))), pick


def test_a_layer_autograd_cannot_reach_is_kept_whole_with_what_feeds_it():
    """Mask / Keypoint R-CNN's eval-mode proposal heads: they and the family feeding them keep
    their width, the rest is pruned, and the pruned model still runs."""
    torch.manual_seed(0)
    model = _Proposals().eval()
    x = torch.randn(2, 3, 16, 16)
    pruner = EvolutionarySynthesisPruner(model, x, env=0.5, seed=3)
    assert "leaves no autograd trace" in pruner.kept_whole["score"]
    assert "'score'" in pruner.kept_whole["body"]
    assert [layer.name for layer in pruner.layers] == ["stem"]
    pruner.step()
    pruner.step()
    assert model.stem.out_channels < 16 and model.body.out_channels == 16 and model.score.in_channels == 16
    scores, pick = model(x)
    assert scores.shape == (2, 3) and pick.shape == (2,)


class _Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.conv(x).detach()).mean((2, 3))


def test_a_model_with_nothing_prunable_names_the_layer_and_the_reason():
    with pytest.raises(UntraceableModelError, match=r"'conv' is kept whole: it runs but leaves no autograd trace"):
        EvolutionarySynthesisPruner(_Detached(), torch.zeros(1, 3, 8, 8), env=0.9)


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).eval()


def test_a_vision_transformer_is_pruned_and_its_attention_width_kept():
    """torchvision's ViT: the MLPs lose channels; the hidden size (a multiple of the heads,
    read back by ``VisionTransformer.forward``) stays, with the reason said."""
    model, x = _tiny_vit(), torch.randn(1, 3, 32, 32)
    pruner = EvolutionarySynthesisPruner(model, x, env=0.6, seed=1)
    assert "attention" in pruner.kept_whole["conv_proj"]
    pruner.step()
    pruner.step()
    widths = [block.mlp[0].out_features for block in model.encoder.layers]
    assert min(widths) < 32 and model.conv_proj.out_channels == 16
    assert model(x).shape == (1, 3)


def test_a_step_traces_the_model_once(monkeypatch):
    """The model is traced again only when the next step needs it (a chain of n steps: n
    traces), and sees what the user changed between steps."""
    calls = []
    real = surgery.trace
    monkeypatch.setattr(surgery, "trace", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = torchvision.models.squeezenet1_1(num_classes=4).eval()
    pruner = EvolutionarySynthesisPruner(model, torch.randn(1, 3, 64, 64), env=0.8)
    for _ in range(3):
        pruner.step()
    assert len(calls) == 3


def test_a_model_the_tracer_cannot_follow_names_where_it_failed():
    """ShuffleNet's channel shuffle defeats torch-pruning 1.6's tracer (its MetaPruner fails as
    well): one sentence naming the layer and the reason."""
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=3).eval()
    with pytest.raises(UntraceableModelError, match=r"cannot trace ShuffleNetV2 at the \w+ after layer 'stage\d"):
        EvolutionarySynthesisPruner(model, torch.zeros(1, 3, 32, 32), env=0.9)
