"""Save and load pruned networks without pickling modules.

A file holds plain data only: a format tag, the architecture's builder (a name
from a fixed registry, never an import path), every layer's shape, and the
tensors. Loading uses ``torch.load(weights_only=True)``, rebuilds the base
architecture, reshapes its layers to the stored widths and loads the tensors.

Example:
    >>> import tempfile, os
    >>> from squish_plugin import squeezenet1_1_ancestor, save_pruned, load_pruned
    >>> path = os.path.join(tempfile.mkdtemp(), "ancestor.pt")
    >>> save_pruned(squeezenet1_1_ancestor(weights=None), path)
    >>> load_pruned(path).classifier[1].out_channels
    10
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .errors import CheckpointError, InvalidArgumentError

__all__ = [
    "atomic_file",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_pruned",
    "save_pruned",
    "write_json_atomic",
]

FORMAT = "squish-plugin/pruned-v1"


def _builders() -> dict[str, Callable[..., nn.Module]]:
    from .models import squeezenet1_1_ancestor

    return {"squeezenet1_1_ancestor": lambda **kw: squeezenet1_1_ancestor(weights=None, **kw)}


def _build(arch: dict[str, Any]) -> nn.Module:
    import torchvision

    builder = arch.get("builder")
    kwargs = dict(arch.get("kwargs", {}))
    if isinstance(builder, str) and builder.startswith("torchvision:"):
        name = builder.split(":", 1)[1]
        if name not in torchvision.models.list_models():
            raise CheckpointError(f"unknown torchvision architecture {name!r} in the checkpoint.")
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    elif isinstance(builder, str) and builder.startswith("timm:"):
        from .zoo import zoo_model

        model = zoo_model(builder, int(kwargs.get("num_classes", 1000)), None)
    elif builder in _builders():
        model = _builders()[builder](**kwargs)
    else:
        raise CheckpointError(f"the checkpoint names no known architecture ({builder!r}); pass model= to load it.")
    model.squish_arch = {"builder": builder, "kwargs": kwargs}
    return model


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str) -> Iterator[IO]:
    """An open temp file beside ``path`` that replaces ``path`` only once written
    and synced: a reader never sees half a file, a crash leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "w") as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON (indented, sorted keys) atomically (see :func:`atomic_file`)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def _layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            shapes[name] = [module.in_channels, module.out_channels, module.groups]
        elif isinstance(module, nn.Linear):
            shapes[name] = [module.in_features, module.out_features]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            shapes[name] = [module.num_features]
    return shapes


def save_pruned(model: nn.Module, path: str | os.PathLike, *, arch: dict | None = None) -> None:
    """Write ``model`` (pruned or not) to ``path`` atomically, as plain data.

    ``arch`` names how to rebuild the unpruned architecture, e.g.
    ``{"builder": "torchvision:resnet18", "kwargs": {"num_classes": 10}}``; models
    from :func:`squeezenet1_1_ancestor` carry it already. Without it, loading needs
    ``load_pruned(path, model=<unpruned instance>)``.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    arch = arch or getattr(model, "squish_arch", None) or {}
    payload = {
        "format": FORMAT,
        "arch": {"builder": arch.get("builder"), "kwargs": dict(arch.get("kwargs", {}))},
        "layers": _layer_shapes(model),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    atomic_save(payload, path)


def _reshape(model: nn.Module, layers: dict[str, list[int]]) -> None:
    modules = dict(model.named_modules())
    for name, dims in layers.items():
        module = modules.get(name)
        if isinstance(module, nn.modules.conv._ConvNd) and len(dims) == 3:
            module.in_channels, module.out_channels, module.groups = (int(d) for d in dims)
        elif isinstance(module, nn.Linear) and len(dims) == 2:
            module.in_features, module.out_features = (int(d) for d in dims)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and len(dims) == 1:
            module.num_features = int(dims[0])
        else:
            raise CheckpointError(f"layer {name!r} of the checkpoint does not fit the architecture.")


def _assign(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace every parameter and buffer by the stored tensor (shapes may differ)."""
    own = set(model.state_dict())
    if set(state) != own:
        diff = sorted(set(state) ^ own)
        raise CheckpointError(f"checkpoint and architecture disagree on tensor {diff[0]!r}.")
    for key, value in state.items():
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(value.clone(), requires_grad=value.is_floating_point())
        else:
            owner._buffers[attr] = value.clone()


def load_pruned(path: str | os.PathLike, *, model: nn.Module | None = None) -> nn.Module:
    """Load a network written by :func:`save_pruned` (``weights_only=True``).

    ``model`` is an unpruned instance of the architecture, needed only when the
    file names no builder; it is reshaped in place and returned.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a readable squish-plugin checkpoint ({type(exc).__name__})."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a squish-plugin checkpoint ({FORMAT}).")
    arch = payload.get("arch") or {}
    net = model if model is not None else _build(arch)
    _reshape(net, payload["layers"])
    _assign(net, payload["state_dict"])
    if arch.get("builder"):
        net.squish_arch = arch
    return net
