"""Small helpers shared by the tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

#: the quickstart recipe cut to two short generations: an end-to-end run in seconds
QUICK = {"evolution.generations": 2, "train.ancestor_epochs": 0.5, "train.epochs_per_generation": 0.5}


def set_args(overrides: dict[str, object]) -> list[str]:
    """``--set key=value`` for each override, in order."""
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def smooth(geo, cin, cout):
    """A fake layer timer: time grows with MACs and with the activations read and written."""
    k, hw = geo["kernel"][0] * geo["kernel"][1], geo["in_hw"][0] * geo["in_hw"][1]
    return 1e-7 * k * cin * cout * hw + 1e-5 * hw * (cin + cout)


def blocked16(geo, cin, cout, slow):
    """A fake target that computes in blocks of 16 channels (a cut width under 16 costs as
    much as 16) and runs a layer ``slow`` times slower where a cut width leaves the
    multiples of 16 (a layer's full widths, such as the image's 3 channels, run at full speed)."""
    off = any(w % 16 and w != full for w, full in ((cin, geo["cin"]), (cout, geo["cout"])))
    cin, cout = max(cin, min(16, geo["cin"])), max(cout, min(16, geo["cout"]))
    return smooth(geo, cin, cout) * (slow if off else 1.0)


def tiny_onnx(path, *, batch: int = 1, size: int = 16, head: bool = False):
    """A tiny network exported to ONNX at ``path`` (input ``input``, output ``logits``): a 3x3
    Conv+ReLU, and with ``head`` a pooled Linear classifier of 10 classes."""
    import torch

    layers = [torch.nn.Conv2d(3, 8 if head else 4, 3, padding=1 if head else 0), torch.nn.ReLU()]
    if head:
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)]
    torch.onnx.export(
        torch.nn.Sequential(*layers).eval(),
        torch.randn(batch, 3, size, size),
        str(path),
        dynamo=False,
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
    )
    return path
