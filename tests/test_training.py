"""The training loop's knowledge distillation: the teacher's soft targets pull the
student towards it; with alpha = 0 it is plain cross-entropy."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from squish_plugin.study.data import LoadedSplit
from squish_plugin.study.training import TrainSettings, train


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
