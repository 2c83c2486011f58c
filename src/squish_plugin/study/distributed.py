"""Several processes, one study: torch.distributed (torchrun) support.

Launched with ``torchrun --nproc_per_node N -m squish_plugin run recipe.yaml``, every
process runs the same study in lockstep. Training is data-parallel
(DistributedDataParallel; gloo on CPU, nccl on CUDA); synthesis is identical on every
rank by construction (same seed, same weights) and checked: before an offspring trains,
every rank hashes its architecture and weights and the ranks compare the hashes. Only
rank 0 writes files.

Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) every function here is a
no-op for a single process.

Example:
    >>> from squish_plugin.study import distributed
    >>> distributed.rank(), distributed.world_size(), distributed.is_main()
    (0, 1, True)
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InvalidArgumentError, SquishError

__all__ = [
    "ReplicaMismatchError",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "check_replicas",
    "device_for",
    "fingerprint",
    "is_main",
    "rank",
    "setup",
    "shutdown",
    "world_size",
]

T = TypeVar("T")


class ReplicaMismatchError(SquishError):
    """The ranks of a distributed run hold different networks where they must agree."""


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes of the run (1 without torch.distributed)."""
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on the process that writes files (rank 0)."""
    return rank() == 0


def setup(device: str = "auto") -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``): nccl with one GPU per process when ``device`` (a
    recipe's ``train.device``) means CUDA, gloo on CPU. Returns whether the run is
    distributed."""
    cuda = _wants_cuda(device)
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            count = torch.cuda.device_count()
            if local >= count:
                raise InvalidArgumentError(
                    f"process LOCAL_RANK {local} has no GPU of its own: this machine has {count}; start at most "
                    f"{count} processes per node (--nproc_per_node) or set train.device=cpu (gloo)."
                )
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return _active()


def shutdown() -> None:
    """Leave the process group (end of a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (e.g. the run directory's name)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _wants_cuda(choice: str) -> bool:
    """Whether a recipe's ``train.device`` (``auto``/``cpu``/``cuda``) means CUDA here."""
    if choice not in ("auto", "cpu", "cuda"):
        raise InvalidArgumentError(f"device must be 'auto', 'cpu' or 'cuda', got {choice!r}.")
    if choice == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("train.device is 'cuda' but PyTorch sees no CUDA GPU; use 'auto' or 'cpu'.")
    return choice == "cuda" or (choice == "auto" and torch.cuda.is_available())


def device_for(choice: str) -> torch.device:
    """The device a recipe's ``train.device`` (``auto``/``cpu``/``cuda``) means in this
    process: under torchrun on CUDA, the process's own GPU (``LOCAL_RANK``)."""
    return torch.device("cuda", torch.cuda.current_device()) if _wants_cuda(choice) else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (the values themselves alone)."""
    if not _active():
        return list(values)
    on_gpu = dist.get_backend() == "nccl"  # nccl reduces tensors on this process's GPU
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of a network's parameter and buffer names, shapes, dtypes and bytes: equal
    fingerprints mean the same architecture with the same weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def check_replicas(model: nn.Module, what: str) -> dict[str, Any] | None:
    """Compare ``model``'s fingerprint across ranks; raise :class:`ReplicaMismatchError`
    naming the first rank that differs from rank 0. Returns ``{"ranks": N,
    "fingerprint": sha}`` in a distributed run, ``None`` otherwise."""
    if not _active():
        return None
    mine = fingerprint(model)
    every: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    for r, fp in enumerate(every):
        if fp != every[0]:
            raise ReplicaMismatchError(
                f"{what} differs between rank 0 and rank {r} (architecture or weights); every rank must "
                "run the same recipe, seed, data and squish-plugin version."
            )
    return {"ranks": len(every), "fingerprint": mine}
