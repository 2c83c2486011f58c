"""The study report: generation records -> CSV, JSON, a Table-2-style Markdown
report and two plots, all written atomically into the run directory.

A *generation record* is a plain dict, one per generation (0 = the ancestor)::

    {"generation": 3, "seed": 7, "parent": 2, "params": 310_000, "size_mb": 1.24,
     "macs": 120_000_000, "widths": {"features.0": 48, ...}, "top1": 81.2,
     "top5": 97.0, "train_seconds": 640.0, "checkpoint": "gen03.pt"}

Extra keys are kept in ``generations.json`` and left out of ``generations.csv``.
Sizes are float32 parameter bytes: ``MB = params * 4 / 1e6``.

Example:
    >>> recs = [{"generation": g, "size_mb": s, "top1": a}
    ...         for g, s, a in [(0, 2.91, 84.0), (1, 2.3, 84.5), (2, 1.9, 83.0)]]
    >>> [n["generation"] for n in select_squishednets(recs, sizes_mb=(2.4, 2.0, 1.0))]
    [1, 2, None]
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..persistence import atomic_write_bytes
from .report_notes import resolution, slower_than_ancestor

__all__ = [
    "ALEXNET_PARAMS",
    "CSV_COLUMNS",
    "RULES",
    "SQUEEZENET1_1_PARAMS",
    "SQUISHEDNET_SIZES_MB",
    "select_squishednets",
    "write_report",
]

#: torchvision's squeezenet1_1 and alexnet (1,000 classes), the paper's references.
SQUEEZENET1_1_PARAMS = 1_235_496
ALEXNET_PARAMS = 61_100_840
#: The paper's SquishedNet-1..4 sizes (Table 2), in MB.
SQUISHEDNET_SIZES_MB = (2.4, 2.0, 1.3, 0.95)
RULES = ("first_below", "pareto")
CSV_COLUMNS = (
    "generation",
    "seed",
    "parent",
    "params",
    "size_mb",
    "macs",
    "top1",
    "top5",
    "train_seconds",
    "checkpoint",
)
_REQUIRED = (*CSV_COLUMNS, "widths")
_DASH = "—"
_PLOTS = {"top1_vs_size": "top1_vs_size.png", "widths": "widths.png"}


def _mb(params: int) -> float:
    return params * 4 / 1e6


def _check_sizes(sizes_mb: Sequence[float]) -> tuple[float, ...]:
    sizes = tuple(sizes_mb)
    if not sizes:
        raise InvalidArgumentError("sizes_mb must name at least one target size in MB.")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < math.inf:
            raise InvalidArgumentError(f"sizes_mb must be positive finite numbers, got {s!r}.")
    if any(b >= a for a, b in zip(sizes, sizes[1:])):
        raise InvalidArgumentError(f"sizes_mb must be strictly decreasing, got {list(sizes)}.")
    return sizes


def _sorted(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[Mapping]:
    seen = set()
    for rec in records:
        if not isinstance(rec, Mapping):
            raise InvalidArgumentError(f"each generation record must be a dict, got {rec!r}.")
        missing = [k for k in ("generation", *keys) if k not in rec]
        if missing:
            gen = rec.get("generation", "?")
            raise InvalidArgumentError(f"generation record {gen} lacks {missing}.")
        if rec["generation"] in seen:
            raise InvalidArgumentError(f"generation {rec['generation']} appears twice in records.")
        seen.add(rec["generation"])
    return sorted(records, key=lambda r: r["generation"])


def _pareto_front(offspring: list[Mapping]) -> list[Mapping]:
    # Smallest first, best top-1 first within a size; a member must beat every
    # smaller one. Exact ties keep the earlier generation.
    front, best = [], -math.inf
    for rec in sorted(offspring, key=lambda r: (r["size_mb"], -r["top1"], r["generation"])):
        if rec["top1"] > best:
            front.append(rec)
            best = rec["top1"]
    return front


def select_squishednets(
    records: Sequence[Mapping[str, Any]],
    sizes_mb: Sequence[float] = SQUISHEDNET_SIZES_MB,
    rule: str = "first_below",
) -> list[dict]:
    """Name SquishedNet-1..k: for each target size, the offspring generation that
    plays it, or ``None`` when the run never got that small.

    * ``"first_below"``: the first generation >= 1 with ``size_mb <= target``.
    * ``"pareto"``: on the top-1-vs-size Pareto front of generations >= 1, the
      member with the largest ``size_mb <= target``.

    Under either rule one generation may play two targets when it is the only
    candidate (e.g. a generation that jumps from 2.5 MB to 1.2 MB). Each entry is
    ``{"name", "target_mb", "generation", "rule"}``.

    Example:
        >>> recs = [{"generation": 0, "size_mb": 2.9, "top1": 80.0},
        ...         {"generation": 1, "size_mb": 2.2, "top1": 79.0},
        ...         {"generation": 2, "size_mb": 2.1, "top1": 81.0}]
        >>> [n["generation"] for n in select_squishednets(recs, (2.4,), "pareto")]
        [2]
    """
    if rule not in RULES:
        raise InvalidArgumentError(f"rule must be one of {list(RULES)}, got {rule!r}.")
    sizes = _check_sizes(sizes_mb)
    keys = ("size_mb", "top1") if rule == "pareto" else ("size_mb",)
    offspring = [r for r in _sorted(records, keys) if r["generation"] >= 1]
    pool = _pareto_front(offspring) if rule == "pareto" else offspring
    chosen = []
    for target in sizes:
        fits = [r for r in pool if r["size_mb"] <= target]
        if rule == "pareto":
            fits.sort(key=lambda r: (-r["size_mb"], r["generation"]))
        chosen.append(fits[0]["generation"] if fits else None)
    return [
        {"name": f"SquishedNet-{k}", "target_mb": t, "generation": g, "rule": rule}
        for k, (t, g) in enumerate(zip(sizes, chosen), start=1)
    ]


# --------------------------------------------------------------------- files


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy and torch scalars
        return obj.item()
    raise InvalidArgumentError(f"cannot write {type(obj).__name__} {obj!r} to JSON.")


def _csv_text(records: list[Mapping]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: "" if rec[k] is None else _plain(rec[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _check_throughput(throughput: Mapping | None) -> tuple[str | None, dict[int, float]]:
    if throughput is None:
        return None, {}
    label = throughput.get("label") if isinstance(throughput, Mapping) else None
    values = throughput.get("values") if isinstance(throughput, Mapping) else None
    if not isinstance(label, str) or not label or not isinstance(values, Mapping):
        raise InvalidArgumentError("throughput must be {'label': str, 'values': {generation: images_per_second}}.")
    try:
        return label, {int(g): float(v) for g, v in values.items()}
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"throughput values must map generations to numbers, got {dict(values)!r}."
        ) from None


def _check_squishednets(squishednets: Sequence[Mapping], gens: set[int]) -> None:
    for net in squishednets:
        if not isinstance(net, Mapping) or not {"name", "target_mb", "generation"} <= set(net):
            raise InvalidArgumentError(f"squishednets entries need name, target_mb and generation, got {net!r}.")
        if net["generation"] is not None and net["generation"] not in gens:
            raise InvalidArgumentError(f"{net['name']} names generation {net['generation']}, which is not in records.")


# ------------------------------------------------------------------ markdown


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _DASH
    return format(value, spec)


def _factor(ref_mb: float, size_mb: float) -> str:
    r = ref_mb / size_mb
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _table2(by_gen: dict[int, Mapping], squishednets: Sequence[Mapping], ips: dict) -> list[str]:
    def row(model: str, gen: int) -> list[str]:
        rec = by_gen[gen]
        return [
            model,
            str(gen),
            f"{rec['size_mb']:.2f}",
            _factor(_mb(SQUEEZENET1_1_PARAMS), rec["size_mb"]),
            _factor(_mb(ALEXNET_PARAMS), rec["size_mb"]),
            _fmt(ips.get(gen), ",.0f"),
            _fmt(rec["top1"], ".2f"),
        ]

    rows = [row("Ancestor (SqueezeNet v1.1)", 0)]
    for net in squishednets:
        if net["generation"] is None:
            rows.append([net["name"], f"not reached (<= {net['target_mb']} MB)"] + [_DASH] * 5)
        else:
            rows.append(row(net["name"], net["generation"]))
    header = (
        "Model",
        "Generation",
        "Size (MB)",
        "Reduction vs SqueezeNet v1.1",
        "Reduction vs AlexNet",
        "Images/s",
        "Top-1 (%)",
    )
    return _table(header, rows)


def _generations_table(records: list[Mapping], ips: dict) -> list[str]:
    held = any("holdout_top1" in r for r in records)  # the run held out a slice of its training set
    rows = [
        [
            str(r["generation"]),
            _fmt(r["parent"], "d"),
            f"{r['params']:,}",
            f"{r['size_mb']:.3f}",
            _fmt(r["macs"] / 1e6, ".1f"),
            _fmt(r["top1"], ".2f"),
            _fmt(r["top5"], ".2f"),
            *([_fmt(r.get("holdout_top1"), ".2f")] if held else []),
            _fmt(r["train_seconds"], ".0f"),
            _fmt(ips.get(r["generation"]), ",.0f"),
        ]
        for r in records
    ]
    header = (
        "Generation",
        "Parent",
        "Params",
        "Size (MB)",
        "MACs (M)",
        "Top-1 (%)",
        "Top-5 (%)",
        *(["Held-out top-1 (%)"] if held else []),
        "Train (s)",
        "Images/s",
    )
    return _table(header, rows)


def _recipe_yaml(recipe: Mapping) -> str:
    plain = json.loads(json.dumps(recipe, default=_jsonable))  # tuples, paths -> YAML-safe
    try:
        import yaml
    except ImportError:  # JSON is valid YAML
        return json.dumps(plain, indent=2)
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False).rstrip()


def _markdown(records, squishednets, recipe, label, ips, title, plots_ok, sections=()) -> str:
    by_gen = {r["generation"]: r for r in records}
    rules = sorted({str(n.get("rule", "unspecified")) for n in squishednets})
    targets = " / ".join(str(float(n["target_mb"])) for n in squishednets)
    out = [
        f"# {title}",
        "",
        f"SquishedNets named by rule `{', '.join(rules) or 'unspecified'}` "
        f"for target sizes {targets or _DASH} MB. Sizes are float32 parameter bytes, "
        "MB = params * 4 / 1e6: SqueezeNet v1.1 (torchvision, 1,000 classes) has "
        f"{SQUEEZENET1_1_PARAMS:,} params = {_mb(SQUEEZENET1_1_PARAMS):.2f} MB, AlexNet has "
        f"{ALEXNET_PARAMS:,} params = {_mb(ALEXNET_PARAMS):.1f} MB.",
        "",
        *resolution(recipe),
        "## SquishedNets (Table 2)",
        "",
        *_table2(by_gen, squishednets, ips),
        "",
        f"Images/s: {label}." if label else "Images/s: not measured.",
        "",
        *slower_than_ancestor(squishednets, ips, label),
        *sections,
        "## Generations",
        "",
        *_generations_table(records, ips),
        "",
        "## Plots",
        "",
    ]
    if plots_ok:
        out += ["![Top-1 vs size](top1_vs_size.png)", "", "![Layer widths](widths.png)", ""]
    else:
        out += ["Plots skipped: matplotlib is not installed (`pip install matplotlib` would add them).", ""]
    if recipe is not None:
        out += ["## Resolved recipe", "", "```yaml", _recipe_yaml(recipe), "```", ""]
    return "\n".join(out)


def write_report(
    run_dir: str | os.PathLike,
    records: Sequence[Mapping[str, Any]],
    *,
    squishednets: Sequence[Mapping[str, Any]],
    recipe: Mapping[str, Any] | None = None,
    throughput: Mapping[str, Any] | None = None,
    title: str = "SquishedNets study",
    sections: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``generations.csv``, ``generations.json``, ``report.md``,
    ``top1_vs_size.png`` and ``widths.png`` into ``run_dir``; return their paths
    keyed ``csv``, ``json``, ``report``, ``top1_vs_size``, ``widths`` (no plot keys
    when matplotlib is missing).

    ``squishednets`` is what :func:`select_squishednets` returns. ``throughput``
    is ``{"label": "ONNX Runtime CPU, batch 32", "values": {generation: images_per_s}}``
    (generation keys may be strings, as after a JSON round trip); generations it
    leaves out show "—". ``sections`` are Markdown lines placed after Table 2 (the
    finishing stage's tables). Everything is rendered in memory first and each file is
    replaced atomically, so a crash leaves the previous files whole.

    Example:
        >>> paths = write_report("runs/a", records,
        ...                      squishednets=select_squishednets(records))  # doctest: +SKIP
    """
    recs = _sorted(records, _REQUIRED)
    gens = {r["generation"] for r in recs}
    if 0 not in gens:
        raise InvalidArgumentError("records must include generation 0 (the ancestor).")
    _check_squishednets(squishednets, gens)
    label, ips = _check_throughput(throughput)
    if recipe is not None and not isinstance(recipe, Mapping):
        raise InvalidArgumentError(f"recipe must be a dict, got {type(recipe).__name__}.")

    from .plots import render_plots  # matplotlib is optional

    pngs = render_plots(recs, squishednets)
    files = {
        "csv": ("generations.csv", _csv_text(recs).encode()),
        "json": ("generations.json", (json.dumps(list(recs), indent=2, default=_jsonable) + "\n").encode()),
        **{key: (_PLOTS[key], data) for key, data in (pngs or {}).items()},
        # last, so that it never links to a plot that is not there yet
        "report": (
            "report.md",
            _markdown(recs, squishednets, recipe, label, ips, title, pngs is not None, sections).encode(),
        ),
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, (name, data) in files.items():
        atomic_write_bytes(run_dir / name, data)
        paths[key] = run_dir / name
    return paths
