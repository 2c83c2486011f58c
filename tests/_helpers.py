"""Small helpers shared by the tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

#: the quickstart recipe cut to two short generations: an end-to-end run in seconds
QUICK = {"evolution.generations": 2, "train.ancestor_epochs": 0.5, "train.epochs_per_generation": 0.5}


def set_args(overrides: dict[str, object]) -> list[str]:
    """``--set key=value`` for each override, in order."""
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
