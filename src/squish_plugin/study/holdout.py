"""The held-out slice: a fixed, stratified part of the *training* split that every
choice of a study sees (fitness, selection, the teacher, tuning) and no network trains
on. The validation split is only reported.

Example:
    >>> import torch
    >>> from squish_plugin.study.data import LoadedSplit
    >>> from squish_plugin.study.holdout import holdout_split
    >>> split = LoadedSplit(torch.zeros(20, 3, 8, 8, dtype=torch.uint8), torch.arange(20) % 2, ("a", "b"))
    >>> rest, held = holdout_split(split, 0.2, seed=0)
    >>> len(rest), len(held.split), held.split.labels.bincount().tolist()
    (16, 4, [2, 2])
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidArgumentError
from .data import LoadedSplit

__all__ = ["HeldOut", "holdout_split", "proxy_slice"]


@dataclass(frozen=True, eq=False)
class HeldOut:
    """The held-out images and how they were drawn (``record()`` goes into the run)."""

    split: LoadedSplit
    indices: tuple[int, ...]
    fraction: float
    seed: int

    def record(self) -> dict[str, Any]:
        """What a run records: fraction, seed, per-class counts, the indices (into the
        sorted training file list) and their digest, so two runs can be checked to share it."""
        counts = torch.bincount(self.split.labels, minlength=len(self.split.classes)).tolist()
        digest = hashlib.sha256(",".join(map(str, self.indices)).encode()).hexdigest()[:16]
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "images": len(self.indices),
            "per_class": dict(zip(self.split.classes, counts)),
            "digest": digest,
            "indices": list(self.indices),
        }


def holdout_split(split: LoadedSplit, fraction: float, seed: int = 0) -> tuple[LoadedSplit, HeldOut]:
    """``(the rest, the held-out slice)``: ``round(fraction * n_c)`` images of every class
    ``c`` (at least one where the class has two or more), picked by a permutation seeded
    by ``seed`` alone, so every run and method with the same seed holds out the same images."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise InvalidArgumentError(f"the held-out fraction must be a number in (0, 1), got {fraction!r}.")
    gen = torch.Generator().manual_seed(int(seed))
    held: list[int] = []
    for c in range(len(split.classes)):
        members = (split.labels == c).nonzero().flatten()
        n = members.numel()
        take = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
        order = torch.randperm(n, generator=gen)
        held.extend(members[order[:take]].tolist())
    held.sort()
    mask = torch.ones(len(split), dtype=torch.bool)
    mask[held] = False
    index = torch.tensor(held, dtype=torch.long)
    rest = LoadedSplit(split.images[mask], split.labels[mask], split.classes)
    kept = LoadedSplit(split.images[index], split.labels[index], split.classes)
    return rest, HeldOut(kept, tuple(held), float(fraction), int(seed))


def proxy_slice(split: LoadedSplit, n: int) -> LoadedSplit:
    """A fixed, class-balanced-in-expectation sample of ``n`` images of ``split`` (evenly
    spaced indices): what offspring compete on, or what data-driven strengths are measured on."""
    n = min(n, len(split))
    idx = torch.linspace(0, len(split) - 1, n).round().long()
    return LoadedSplit(split.images[idx], split.labels[idx], split.classes)
