"""Lines of the report under its title and Table 2: the resolutions, and the named networks that
run slower than their ancestor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["resolution", "slower_than_ancestor"]


def slower_than_ancestor(squishednets: Sequence[Mapping], ips: dict, label: str | None) -> list[str]:
    """A named network that runs slower than its ancestor on the measured target is said so:
    smaller is not faster when its widths leave the target's fast multiples."""
    base = ips.get(0)
    slow = [
        f"{n['name']} ({ips[n['generation']] / base:.2f}x)"
        for n in squishednets
        if base and n["generation"] is not None and ips.get(n["generation"]) and ips[n["generation"]] < base
    ]
    if not slow:
        return []
    return [
        f"**Slower than the ancestor** on {label}: {', '.join(slow)} of the ancestor's images/s. Smaller is "
        "not faster here: round the widths to the target's fast multiple (`evolution.round_to: auto`) or budget "
        "latency (`resource: latency`).",
        "",
    ]


def resolution(recipe: Mapping | None) -> list[str]:
    """The sizes the study trained and evaluated at (a model that cannot learn at a size is
    seen here first)."""
    d = (recipe or {}).get("data") or {}
    crop = f"{d['train_crop']}-px windows of " if d.get("train_crop") else ""
    return [f"Trained on {crop}{d['train_size']}-px images, evaluated at {d['eval_size']} px.", ""] if d else []
