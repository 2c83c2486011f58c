"""The torch-pruning-style arguments the surgery takes from users, checked where they enter."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import InvalidArgumentError

__all__ = [
    "batch_size",
    "check_inputs",
    "check_unwrapped",
    "describe_inputs",
    "first_tensor",
    "ignored_modules",
    "run_model",
]


def ignored_modules(
    model: nn.Module, names: Mapping[nn.Module, str], ignored_layers: Iterable[object]
) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """``ignored_layers`` as torch-pruning reads it: a module stands for itself and every
    module inside it (``model.layer4`` protects the whole stage); an ``nn.Parameter`` is a
    parameter torch-pruning must never cut (``ignored_params``)."""
    modules: list[nn.Module] = []
    params: list[nn.Parameter] = []
    owned = {id(p) for p in model.parameters()}
    for item in ignored_layers:
        if isinstance(item, nn.Parameter):
            if id(item) not in owned:
                raise InvalidArgumentError("a parameter in ignored_layers is not one of the model's parameters.")
            params.append(item)
        elif isinstance(item, nn.Module):
            if item not in names:
                raise InvalidArgumentError(
                    f"ignored_layers holds a {type(item).__name__} that is not a submodule of the model "
                    "(pass the model's own modules, e.g. model.layer4)."
                )
            modules.extend(item.modules())
        else:
            raise InvalidArgumentError(
                f"ignored_layers takes modules and parameters of the model, got {type(item).__name__}."
            )
    return modules, params


def check_unwrapped(model: nn.Module, unwrapped: object) -> list[tuple[nn.Parameter, int]] | None:
    if unwrapped is None:
        return None
    own = {id(p) for p in model.parameters()}
    pairs = list(unwrapped) if isinstance(unwrapped, (list, tuple)) else None
    if pairs is None or not all(
        isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], nn.Parameter) and isinstance(x[1], int) for x in pairs
    ):
        raise InvalidArgumentError("unwrapped_parameters must be a list of (parameter, dim) pairs, as torch-pruning's.")
    if any(id(p) not in own for p, _ in pairs):
        raise InvalidArgumentError("every parameter in unwrapped_parameters must belong to the model.")
    return pairs


def check_inputs(example_inputs: object) -> object:
    """``example_inputs`` as torch-pruning takes them: a tensor, a tuple or list of
    positional inputs, or a dict of keyword inputs (nested containers of tensors allowed);
    tensors made inside ``torch.inference_mode()`` are copied so that autograd can trace."""
    if not isinstance(example_inputs, (torch.Tensor, list, tuple, Mapping)):
        raise InvalidArgumentError(
            "example_inputs must be a tensor, a tuple or list of inputs, or a dict of keyword inputs, "
            f"as torch-pruning takes them; got {type(example_inputs).__name__}."
        )
    return _traceable(example_inputs)


def _traceable(example_inputs: object) -> object:
    """``example_inputs`` with every tensor made inside ``inference_mode`` copied out of it."""
    if isinstance(example_inputs, torch.Tensor):
        if example_inputs.is_inference():
            with torch.inference_mode(False):
                return example_inputs.clone()
        return example_inputs
    if isinstance(example_inputs, (list, tuple)):
        return type(example_inputs)(_traceable(x) for x in example_inputs)
    if isinstance(example_inputs, Mapping):
        return {k: _traceable(v) for k, v in example_inputs.items()}
    return example_inputs  # a flag or a size among the inputs passes as it is


def run_model(model: nn.Module, example_inputs: object, forward_fn: Callable | None = None) -> object:
    """One forward pass as torch-pruning makes it: ``forward_fn(model, inputs)`` when given,
    ``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple or list (falling back to
    ``model(inputs)``: detection models take a list), else ``model(inputs)``."""
    if forward_fn is not None:
        return forward_fn(model, example_inputs)
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        try:
            return model(*example_inputs)
        except Exception:
            return model(example_inputs)
    return model(example_inputs)


def first_tensor(example_inputs: object) -> torch.Tensor | None:
    """The first tensor in ``example_inputs`` (depth first), or None."""
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs
    items = example_inputs.values() if isinstance(example_inputs, Mapping) else example_inputs
    if isinstance(items, (list, tuple)) or isinstance(example_inputs, Mapping):
        for item in items:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def batch_size(example_inputs: object) -> int:
    """The batch of ``example_inputs``: the first dimension of its first tensor (1 without)."""
    tensor = first_tensor(example_inputs)
    return max(int(tensor.shape[0]), 1) if tensor is not None and tensor.dim() > 0 else 1


def describe_inputs(example_inputs: object) -> str:
    """``of shape (1, 3, 224, 224)``, ``(a tuple of 2)``...: example_inputs in an error."""
    if isinstance(example_inputs, torch.Tensor):
        return f"of shape {tuple(example_inputs.shape)}"
    return f"(a {type(example_inputs).__name__} of {len(example_inputs)})"
