"""The report's two figures, rendered to PNG bytes with matplotlib's Agg canvas.

Uses ``matplotlib.figure.Figure`` + ``FigureCanvasAgg`` directly, never pyplot,
so no global backend or figure state is touched and nothing needs a display.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

__all__ = ["layer_order", "render_comparison", "render_plots"]

_DPI = 120


def render_plots(records: Sequence[Mapping], squishednets: Sequence[Mapping]) -> dict[str, bytes] | None:
    """PNG bytes keyed ``top1_vs_size`` and ``widths``, or ``None`` when matplotlib
    is not installed. ``records`` are sorted by generation and start with 0."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figures = {
        "top1_vs_size": _top1_vs_size(Figure, records, squishednets),
        "widths": _widths(Figure, records),
    }
    out = {}
    for key, fig in figures.items():
        buf = io.BytesIO()
        FigureCanvasAgg(fig).print_png(buf)
        out[key] = buf.getvalue()
    return out


def _top1_vs_size(Figure, records, squishednets):
    fig = Figure(figsize=(7.5, 4.8), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    sizes = [r["size_mb"] for r in records]
    top1 = [r["top1"] for r in records]
    ax.plot(sizes, top1, "-o", color="tab:blue", ms=4, lw=1.2, label="generations, in order")
    for r in records:
        ax.annotate(
            str(r["generation"]),
            (r["size_mb"], r["top1"]),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            color="tab:blue",
        )
    ancestor = records[0]
    ax.plot(ancestor["size_mb"], ancestor["top1"], "*", color="black", ms=14, label="ancestor")
    by_gen = {r["generation"]: r for r in records}
    named = [n for n in squishednets if n["generation"] is not None]
    for i, net in enumerate(named):
        r = by_gen[net["generation"]]
        ax.plot(
            r["size_mb"],
            r["top1"],
            "D",
            color="tab:red",
            ms=8,
            mfc="none",
            mew=1.8,
            label="SquishedNet" if i == 0 else None,
        )
        ax.annotate(
            net["name"],
            (r["size_mb"], r["top1"]),
            xytext=(-7, -12),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            color="tab:red",
            fontweight="bold",
        )
    for net in squishednets:
        ax.axvline(net["target_mb"], color="0.8", lw=0.8, ls="--", zorder=0)
    # Evolution shrinks the network, so size falls from left to right.
    ax.invert_xaxis()
    ax.margins(x=0.06, y=0.15)
    ax.set_xlabel("size (MB, float32 params)  -  dashed: SquishedNet targets")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Top-1 vs size across generations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def layer_order(records: list[dict]) -> list[str]:
    """The ancestor's layers in model order, whether the records come from memory or from a
    lineage file (whose objects are written with sorted keys)."""
    base = records[0]["widths"]
    return [name for name in records[0].get("layers", base) if name in base]


def _widths(Figure, records):
    import numpy as np

    base = records[0]["widths"]
    layers = layer_order(records)
    ratio = np.full((len(layers), len(records)), np.nan)
    for j, r in enumerate(records):
        for i, name in enumerate(layers):
            w, b = r["widths"].get(name), base[name]
            if w is not None and b:
                ratio[i, j] = w / b
    height = max(3.0, 0.24 * len(layers) + 1.4)
    width = max(5.0, 0.42 * len(records) + 3.2)
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    vmax = max(1.0, float(np.nanmax(ratio))) if not np.all(np.isnan(ratio)) else 1.0
    im = ax.imshow(
        np.ma.masked_invalid(ratio), aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest"
    )
    ax.set_xticks(range(len(records)), [str(r["generation"]) for r in records], fontsize=8)
    ax.set_yticks(range(len(layers)), [f"{n} ({base[n]})" for n in layers], fontsize=7)
    ax.set_xlabel("generation")
    ax.set_title("Layer width / ancestor width")
    fig.colorbar(im, ax=ax, label="width / ancestor width", fraction=0.05, pad=0.02)
    return fig


def _seed_means(rows: Sequence[Mapping]) -> list[tuple[float, float, float]]:
    """``(mean params, mean top-1, sd of top-1)`` per SquishedNet over the seeds, by size."""
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r["squishednet"], []).append(r)
    points = []
    for members in groups.values():
        top1 = [m["top1"] for m in members]
        mean = sum(top1) / len(top1)
        sd = (sum((x - mean) ** 2 for x in top1) / (len(top1) - 1)) ** 0.5 if len(top1) > 1 else 0.0
        points.append((sum(m["params"] for m in members) / len(members), mean, sd))
    return sorted(points)


def render_comparison(
    rows: Sequence[Mapping], title: str = "Same sizes, same schedule, same training budget"
) -> bytes | None:
    """Top-1 vs parameters, one line per method, mean over seeds with one standard
    deviation as error bars (PNG bytes), or ``None`` without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(7.5, 4.8), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "evolutionary", m))
    for method in methods:
        pts = _seed_means([r for r in rows if r["method"] == method])
        style = {"lw": 2.5, "color": "black", "zorder": 3} if method == "evolutionary" else {"lw": 1.2}
        ax.errorbar(
            [p / 1e3 for p, _, _ in pts],
            [t for _, t, _ in pts],
            yerr=[sd for _, _, sd in pts],
            marker="o",
            capsize=3,
            label=method,
            **style,
        )
    ax.invert_xaxis()
    ax.set_xlabel("parameters (thousands)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()
