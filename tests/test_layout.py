"""The package's floors: imports point one way, modules and functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "squish_plugin"
#: the Jetson kit's script is one self-contained file for the device's Python 3.6
#: (copied alone, importing nothing of the package), not a module of the library
STANDALONE = {PACKAGE / "deploy" / "_kit" / "bench_trt.py"}  # (trtexec_log.py beside it is a module of both)
#: floor -> the floors it must never import (CLI -> baselines -> study -> deploy -> synthesis: engine ->
#: faces -> surgery -> genetics); deploy is a library that knows no recipe or run directory
FORBIDDEN = {
    "threads": {"errors", "models", "persistence", "synthesis", "study", "baselines", "deploy", "cli"},
    "errors": {"models", "persistence", "synthesis", "study", "baselines", "deploy", "cli"},
    "models": {"persistence", "synthesis", "study", "baselines", "deploy", "cli"},
    "zoo": {"models", "persistence", "synthesis", "study", "baselines", "deploy", "cli"},
    "persistence": {"synthesis", "study", "baselines", "deploy", "cli"},
    "synthesis": {"models", "persistence", "study", "baselines", "deploy", "cli"},
    "study": {"baselines", "cli"},
    "baselines": {"cli"},
    "deploy": {"study", "baselines", "cli"},
}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p not in STANDALONE)


def _imports(path: Path) -> list[str]:
    """Every ``squish_plugin`` module ``path`` imports, as a dotted name below the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [".".join([*target, alias.name]) for alias in node.names] if not node.module else []
            out += [".".join(target)] + names
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for name in [module] if module else [a.name for a in node.names]:
                if name and name.startswith("squish_plugin."):
                    out.append(name.removeprefix("squish_plugin."))
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    """No floor imports a floor above it (see DESIGN.md's architecture)."""
    floor = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    bad = [m for m in _imports(path) if m.split(".")[0] in FORBIDDEN.get(floor, set())]
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_genetics_and_resources_never_import_torch_pruning():
    """The genetics core is pure maths: torch-pruning is reached only through the surgery."""
    for name in ("genetics.py", "resources.py"):
        tree = ast.parse((PACKAGE / "synthesis" / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.split(".")[0] == "torch_pruning"}, name


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    """Modules under 400 lines; functions under 60 lines of code (docstring aside)."""
    text = path.read_text()
    assert len(text.splitlines()) <= 400
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                length -= first.end_lineno - first.lineno + 1
            assert length <= 60, f"{node.name} has {length} lines"
