"""The training loop's knowledge distillation: the teacher's soft targets pull the
student towards it; with alpha = 0 it is plain cross-entropy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from squish_plugin.study.data import LoadedSplit
from squish_plugin.study.training import TrainSettings, cpu_bf16_supported, train


def _split(n=64, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return LoadedSplit(images, torch.randint(0, 4, (n,), generator=g), tuple("abcd"))


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _kl_to(student, teacher, split):
    x = (split.images.float() / 255 - 0.45) / 0.225
    with torch.no_grad():
        return float(
            F.kl_div(F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1), log_target=True, reduction="batchmean")
        )


def test_distillation_pulls_student_to_teacher_and_alpha_zero_is_cross_entropy():
    split, teacher = _split(), _net(1)
    kw = dict(epochs=3, seed=0)
    pure = TrainSettings(lr=0.05, channels_last=False, grad_clip=None, distill_alpha=1.0, distill_temperature=1.0)
    student, ce_only = _net(2), _net(2)
    before = _kl_to(student, teacher, split)
    train(student, split, pure, teacher=teacher, epochs=10, seed=0)
    train(ce_only, split, TrainSettings(lr=0.05, channels_last=False, grad_clip=None), epochs=10, seed=0)
    after = _kl_to(student, teacher, split)
    assert after < 0.5 * before and after < 0.5 * _kl_to(ce_only, teacher, split)

    plain = TrainSettings(lr=0.05, channels_last=False, grad_clip=None)
    a, b = _net(2), _net(2)
    train(a, split, plain, **kw)
    train(
        b,
        split,
        TrainSettings(lr=0.05, channels_last=False, grad_clip=None, distill_alpha=0.0),
        teacher=copy.deepcopy(teacher),
        **kw,
    )
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
    c = _net(2)
    train(c, split, TrainSettings(lr=0.05, channels_last=False, grad_clip=None), teacher=teacher, **kw)
    assert not all(torch.allclose(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU runs no bfloat16 natively")
def test_bf16_training_runs_its_forward_passes_in_bfloat16_and_repeats_itself():
    """precision bf16: the convolutions run in bfloat16 (seen by a hook), the weights stay float32,
    distillation works, and the same seed gives the same weights."""
    split, seen = _split(), []
    settings = TrainSettings(lr=0.05, batch_size=16, precision="bf16")
    nets = [_net(1), _net(1)]
    handle = nets[0][0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    for net in nets:
        train(net, split, settings, epochs=1, seed=3, teacher=_net(2))
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in nets[0].parameters())
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
    assert not torch.equal(nets[0][0].weight, _net(1)[0].weight)


def test_bf16_on_a_cpu_without_it_and_unknown_precisions_are_sentences(monkeypatch):
    from squish_plugin.errors import InvalidArgumentError
    from squish_plugin.study import training

    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: False)
    with pytest.raises(InvalidArgumentError, match="AVX512-BF16 or AMX"):
        train(_net(0), _split(), TrainSettings(precision="bf16", device="cpu"), epochs=0.5, seed=0)
    with pytest.raises(InvalidArgumentError, match="fp32, bf16"):
        train(_net(0), _split(), TrainSettings(precision="fp16"), epochs=0.5, seed=0)


def test_finishing_states_written_at_fp32_still_resume():
    """The finishing fingerprint names precision only where it is not fp32 (states written
    before the setting existed carry none)."""
    from squish_plugin.study.finishing import FinishSettings

    assert "precision" not in FinishSettings().fingerprint()
    assert FinishSettings(precision="bf16").fingerprint()["precision"] == "bf16"
    assert FinishSettings(precision="bf16").train_settings(full_size=True).precision == "bf16"
