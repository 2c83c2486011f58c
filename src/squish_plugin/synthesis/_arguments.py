"""The torch-pruning-style arguments the surgery takes from users, checked where they enter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from ..errors import InvalidArgumentError

__all__ = ["check_unwrapped", "ignored_modules"]


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
