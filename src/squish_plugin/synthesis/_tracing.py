"""Tracing for the surgery: one forward pass under torch-pruning's tracer, the layers that ran,
the dependency graph, and the cluster families (which of them may be pruned, and why not)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from ..errors import InvalidArgumentError, UntraceableModelError
from ._arguments import describe_inputs, first_tensor, run_model
from .resources import ROOT_TYPES

__all__ = ["EvalMode", "PrunableLayer", "Trace", "autograd_on", "find_layers", "first_line", "is_out", "trace"]


@dataclass(frozen=True)
class PrunableLayer:
    """A prunable layer: the root module of a torch-pruning group and its width."""

    name: str
    module: nn.Module
    width: int


class EvalMode:
    """Run a block in eval mode (no BatchNorm statistics drift), then restore each
    module's own training flag."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def autograd_on() -> contextlib.ExitStack:
    """Gradients recorded whatever the caller's mode: torch-pruning traces through
    autograd, and users often prune inside ``torch.no_grad()`` or ``torch.inference_mode()``."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


def _check_not_inference(model: nn.Module) -> None:
    """Tensors made inside ``torch.inference_mode()`` can never enter autograd."""
    if any(t.is_inference() for t in [*model.parameters(), *model.buffers()]):
        raise UntraceableModelError(
            f"{type(model).__name__} was built inside torch.inference_mode(), whose tensors autograd cannot "
            "trace; build (or load) the model outside inference_mode (torch.no_grad() is fine)."
        )


@dataclass
class Trace:
    """What one traced forward pass saw: the output shape of every Conv/Linear that ran (in
    the order they ran: the last is the classifier), torch-pruning's graph, and for each layer
    that ran but left no autograd trace, the graph nodes whose channels flow into it."""

    shapes: dict[nn.Module, tuple[int, ...]] = field(default_factory=dict)
    graph: tp.DependencyGraph | None = None
    feeds: dict[object, nn.Module] = field(default_factory=dict)  # graph node -> untraced layer it feeds
    inputs: dict[nn.Module, object] = field(default_factory=dict)  # layer -> input grad_fn (or storage)
    outputs: dict[int, nn.Module] = field(default_factory=dict)  # output storage -> layer
    in_shapes: dict[nn.Module, tuple[int, ...]] = field(default_factory=dict)  # layer -> its input's shape

    @property
    def classifier(self) -> nn.Module:
        return list(self.shapes)[-1]

    def hooks(self, model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        def before(module: nn.Module, args: tuple) -> None:
            tensor = first_tensor(args)
            if tensor is not None:
                self.inputs[module] = tensor.grad_fn or tensor.untyped_storage().data_ptr()
                self.in_shapes[module] = tuple(tensor.shape)

        def after(module: nn.Module, _args: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                self.shapes.pop(module, None)  # a layer run twice counts where it ran last
                self.shapes[module] = tuple(out.shape)
                self.outputs[out.untyped_storage().data_ptr()] = module

        layers = [m for m in model.modules() if isinstance(m, ROOT_TYPES)]
        return [m.register_forward_pre_hook(before) for m in layers] + [m.register_forward_hook(after) for m in layers]


def _forward_error(exc: BaseException, example_inputs: object, forward_fn: Callable | None, guessed: bool) -> Exception:
    """The user's model raised on the inputs: one sentence, with what to pass when they were guessed."""
    if guessed:
        shape = tuple(example_inputs.shape)
        hint = f"torch.zeros(1, {shape[1]}, 28, 28) for 28x28 images" if len(shape) == 4 else "torch.zeros(1, ...)"
        return InvalidArgumentError(
            f"example_inputs were not given and the guess from the model's first layer, one input of shape "
            f"{shape}, does not fit it ({first_line(exc)}); pass example_inputs=, a batch of your inputs, "
            f"e.g. {hint}."
        )
    how = "forward_fn on example_inputs" if forward_fn else "the model on example_inputs"
    return InvalidArgumentError(f"running {how} {describe_inputs(example_inputs)} failed ({first_line(exc)}).")


def trace(
    model: nn.Module,
    example_inputs: object,
    unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] | None = None,
    ignored_params: Sequence[nn.Parameter] = (),
    forward_fn: Callable | None = None,
    *,
    guessed: bool = False,
) -> Trace:
    """One forward pass (``forward_fn(model, example_inputs)`` when given) under torch-pruning's
    tracer, in eval mode: its dependency graph, and what every Conv/Linear that ran saw.
    ``ignored_params`` are never cut; ``guessed``: the inputs were inferred, not given."""
    _check_not_inference(model)
    seen, failed = Trace(), []

    def forward(m: nn.Module, inputs: object) -> object:
        try:
            return run_model(m, inputs, forward_fn)
        except Exception as exc:
            failed.append(exc)
            raise

    handles = seen.hooks(model)
    try:
        with EvalMode(model), autograd_on():
            seen.graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_inputs,
                # a copy: torch-pruning appends what it detects to the list it is given
                unwrapped_parameters=list(unwrapped_parameters) if unwrapped_parameters is not None else None,
                ignored_params=list(ignored_params),
                forward_fn=forward,
            )
    except Exception as exc:
        if failed:  # the user's model raised: report, don't crash
            raise _forward_error(failed[0], example_inputs, forward_fn, guessed) from None
        where = _culprit(exc, {m: n for n, m in model.named_modules()})
        raise UntraceableModelError(
            f"torch-pruning cannot trace {type(model).__name__}{where} ({first_line(exc)})."
        ) from None
    finally:
        for h in handles:
            h.remove()
    if not seen.shapes:
        raise UntraceableModelError("the model runs no Conv or Linear layer, nothing to prune.")
    _untraced_feeds(seen)
    seen.inputs.clear()
    seen.outputs.clear()
    return seen


def _culprit(exc: BaseException, names: dict[nn.Module, str]) -> str:
    """Where in the model torch-pruning's tracer failed: the graph node it was working on when
    it raised (its deepest frame holding one), named by the nearest layer at or before it."""
    node, tb = None, exc.__traceback__
    while tb is not None:
        node = next((v for v in tb.tb_frame.f_locals.values() if isinstance(v, tp.dependency.Node)), node)
        tb = tb.tb_next
    if node is None:
        return ""
    op = (
        node.grad_fn.name()
        if node.grad_fn is not None and hasattr(node.grad_fn, "name")
        else type(node.module).__name__
    )
    frontier, seen = [node], set()
    while frontier:
        current = frontier.pop(0)
        if current in seen:
            continue
        seen.add(current)
        if current.module in names:
            layer = names[current.module]
            return f" at layer '{layer}'" if current is node else f" at the {op} after layer '{layer}'"
        frontier.extend(current.inputs)
    return f" at a {op}"


def _untraced_feeds(seen: Trace) -> None:
    """A layer that runs but leaves no autograd trace (a detector's region-proposal head whose
    scores only pick boxes; no_grad, detach) is never pruned, nor may what feeds it: find the
    graph nodes its input comes from, walking autograd back to the nearest traced ones. An input
    detached from a layer's output is matched by storage; one traced to nothing comes from the
    model's inputs, whose channels never change."""
    graph = seen.graph
    node_of = {node.grad_fn: node for node in graph.module2node.values() if node.grad_fn is not None}
    for module in seen.shapes:
        if module in graph.module2node:
            continue
        source = seen.inputs.get(module)
        if isinstance(source, int):
            producer = seen.outputs.get(source)
            if producer in graph.module2node:
                seen.feeds[graph.module2node[producer]] = module
            continue
        stack, visited = [source], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in visited:
                continue
            visited.add(fn)
            if fn in node_of:
                seen.feeds[node_of[fn]] = module
                continue
            stack.extend(f for f, _ in getattr(fn, "next_functions", ()))


def is_out(graph: tp.DependencyGraph, dep: object) -> bool:
    """Whether a group member prunes its module's output channels."""
    return graph.is_out_channel_pruning_fn(dep.handler)  # type: ignore[attr-defined]


def _why_whole(graph: tp.DependencyGraph, group: tp.Group, feeds: dict, names: dict[nn.Module, str]) -> str | None:
    """Why a family must keep its width, or None when it may be pruned."""
    for dep, _ in group:
        module = dep.target.module
        grouped = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
        if grouped and not (module.groups == module.in_channels == module.out_channels):
            # torch-pruning 1.6 cannot cut channel groups ("INDICES element is out of DATA bounds")
            return f"it holds the grouped convolution '{names.get(module, module)}'"
        if isinstance(module, nn.MultiheadAttention):
            return (
                f"it holds the attention '{names.get(module, module)}', whose width must stay a multiple of its heads"
            )
        # what feeds the untraced layer changes width when a module's outputs, or an op's, are cut
        if dep.target in feeds and (module not in names or is_out(graph, dep)):
            return f"it feeds '{names.get(feeds[dep.target])}', which runs but leaves no autograd trace"
    return None


def find_layers(
    model: nn.Module, seen: Trace, protected: Iterable[nn.Module]
) -> tuple[list[PrunableLayer], dict[str, str], dict[str, tp.Group]]:
    """One prunable layer per cluster family, in model order, and the layers left whole with
    the reason (a grouped convolution, an attention's heads, an untraced layer it feeds), and each
    prunable layer's group over all its channels. A family that holds a ``protected`` module
    (the classifier, ``ignored_layers``) is left out."""
    graph = seen.graph
    protected = set(protected) | set(graph.IGNORED_LAYERS_IN_TRACING)
    names = {m: n for n, m in model.named_modules()}
    visited: set[nn.Module] = set()
    layers: list[PrunableLayer] = []
    groups: dict[str, tp.Group] = {}
    whole = {
        names[m]: "it runs but leaves no autograd trace (no_grad, detach, numpy or a non-float output)"
        for m in seen.shapes
        if m not in graph.module2node and m not in protected
    }
    for name, module in model.named_modules():
        if not isinstance(module, ROOT_TYPES) or module in visited or module not in graph.module2node:
            continue  # not a root, already in a family, or never ran in forward
        if module in protected:
            continue  # its family is out of reach: no group to build (a detector's RoI head's can be huge)
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        width = pruner.get_out_channels(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        coupled = {dep.target.module for dep, _ in group if is_out(graph, dep)}
        visited |= coupled
        if coupled & protected or width < 1:
            continue
        reason = _why_whole(graph, group, seen.feeds, names)
        if reason:
            whole[name] = reason
            continue
        layers.append(PrunableLayer(name, module, width))
        groups[name] = group
    return layers, whole, groups
