"""Recipe files as data: YAML read with one-sentence errors, ``--set a.b=c`` overrides applied
in order. Shared by the study's and the comparison's recipes (their schemas live beside them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidArgumentError

__all__ = ["RecipeError", "apply_overrides", "read_yaml"]


class RecipeError(InvalidArgumentError):
    """A recipe key is unknown, mistyped or out of range."""


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item or not item.split("=", 1)[0].strip():
        raise RecipeError(f"override {item!r} must look like key.path=value, e.g. train.lr=0.01.")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return ``data`` with each ``a.b=c`` applied (values parsed as YAML scalars)."""
    data = yaml.safe_load(yaml.safe_dump(data, sort_keys=False)) or {}  # a copy, in the order written
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: '{key}' is not a section.")
            node = child
        node[keys[-1]] = value
    return data


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}' does not exist.")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise RecipeError(f"recipe file '{path}' is not valid YAML{where}.") from None
