"""Issue #16's G2: at equal validation top-1, how much faster the latency-aware networks run
than the parameter-budget ones and the baselines'. Reads the JSON that
``benchmarks/speed_table.py`` writes per seed. Each label's networks (with the ancestor, where
every curve starts) form a curve of images/s against top-1; at each latency-aware SquishedNet's
top-1 the other curves' images/s is read off by linear interpolation between the two networks
whose top-1 brackets it (outside a curve's range no extrapolation: its end network if that
lies within 0.5 point, the issue's "equal top-1", else none), and the ratio is
reported per seed and as mean +- sd over the seeds; then every network's images/s, speed-up
and share of its MAC ratio, mean +- sd over the seeds. Every figure comes from timings of
one run (one process, interleaved rounds) per seed.

With ``--finished`` (issue #25) each study's networks carry their *finished* top-1 (the run's
``finished.json``: same widths, so the same images/s) and a network not finished yet (and every
baseline row: its finishing is another network's) drops out of the curves.

Run:
    python benchmarks/speed_at_accuracy.py benchmarks/results/speed/amd-seed-{0,1,2}.json
        [--ours latency] [--against params nni] [--finished] [--out FILE_STEM]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from squish_plugin.persistence import atomic_write_text, write_json_atomic


def curves(rows: list[dict]) -> dict[str, list[tuple[float, float, str]]]:
    """``{label: [(top-1, images/s, network), ...]}`` sorted by top-1, the ancestor in each."""
    ancestor = next(r for r in rows if r["network"] == "ancestor")
    out: dict[str, list] = {}
    for r in rows:
        if r["network"] != "ancestor" and r["top1"] == r["top1"]:  # NaN: a structure without a top-1
            out.setdefault(r["network"].split(" ", 1)[0], []).append((r["top1"], r["images_per_second"], r["network"]))
    for points in out.values():
        points.append((ancestor["top1"], ancestor["images_per_second"], "ancestor"))
        points.sort()
    return out


def finished_rows(data: dict, root: Path = Path(".")) -> list[dict]:
    """``data``'s rows with each study network's finished val top-1 (by generation, from its
    run's ``finished.json``; NaN where that network is not finished) and the ancestor's as is."""
    runs = dict(spec.split("=", 1) for spec in data["args"]["run"])
    done = {}
    for label, run in runs.items():
        path = root / run / "finished.json"
        done[label] = json.loads(path.read_text()) if path.is_file() else {}
    out = []
    for r in data["rows"]:
        label = r["network"].split(" ", 1)[0]
        if r["network"] != "ancestor":
            entry = done.get(label, {}).get(str(r["generation"]))
            r = {**r, "top1": float(entry["top1"]) if entry else float("nan")}
        out.append(r)
    return out


def at_top1(points: list[tuple[float, float, str]], top1: float, within: float = 0.5) -> float | None:
    """Images/s of a curve at ``top1`` (linear between its bracketing networks; outside its
    range, its end network if that lies ``within`` points), or None."""
    for (a, sa, _), (b, sb, _) in zip(points, points[1:]):
        if a <= top1 <= b:
            return sa if b == a else sa + (sb - sa) * (top1 - a) / (b - a)
    near = [(abs(t - top1), s) for t, s, _ in points if abs(t - top1) <= within]
    return min(near)[1] if near else None


def _mean_sd(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def per_network(tables: list[dict]) -> list[str]:
    """Every network's images/s, speed-up, share of its MAC ratio and top-1, mean ± sd over
    the seeds' tables (each seed's figures from its own one-run timings)."""
    found: dict[str, list[dict]] = {}
    for data in tables:
        rows = data["rows"]
        base = next(r for r in rows if r["network"] == "ancestor")
        for r in rows:
            ratio = base["macs"] / r["macs"]
            found.setdefault(r["network"], []).append({**r, "mac_ratio": ratio, "share": r["speed_up"] / ratio})
    lines = [
        "| network | seeds | params (mean) | images/s | speed-up | speed-up / MAC ratio | top-1 (%) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in found.items():
        top1 = [r["top1"] for r in rs if r["top1"] == r["top1"]]
        lines.append(
            f"| {name} | {len(rs)} | {statistics.mean(r['params'] for r in rs):,.0f} "
            f"| {_mean_sd([r['images_per_second'] for r in rs], 0)} | {_mean_sd([r['speed_up'] for r in rs], 2)} "
            f"| {_mean_sd([r['share'] for r in rs], 2)} | {_mean_sd(top1, 2) if top1 else '—'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", help="speed_table.py JSON files, one per seed")
    parser.add_argument("--ours", default="latency")
    parser.add_argument("--against", nargs="+", default=["params", "nni"])
    parser.add_argument("--finished", action="store_true", help="the studies' finished top-1 (issue #25)")
    parser.add_argument("--out")
    args = parser.parse_args()
    header = "| seed | network | top-1 (%) | images/s |" + "".join(f" {c} images/s | x {c} |" for c in args.against)
    lines = [header, "|---|---|---:|---:|" + "---:|---:|" * len(args.against)]
    found, ratios = [], {}
    tables = [json.loads(Path(path).read_text()) for path in args.tables]
    if args.finished:
        tables = [{**t, "rows": finished_rows(t)} for t in tables]
    for data in tables:
        seed = data["args"]["seed"]
        by_label = curves(data["rows"])
        for top1, speed, name in sorted(by_label.get(args.ours, []), key=lambda p: p[2]):  # none finished yet: no rows
            if name == "ancestor":
                continue
            row = {"seed": seed, "network": name, "top1": top1, "images_per_second": speed}
            line = f"| {seed} | {name} | {top1:.2f} | {speed:.0f} |"
            for other in args.against:
                theirs = at_top1(by_label.get(other, []), top1)
                row[other] = theirs
                if theirs is None:
                    line += " — | — |"
                    continue
                ratios.setdefault((name.split(" ", 1)[1], other), []).append(speed / theirs)
                line += f" {theirs:.0f} | {speed / theirs:.2f} |"
            found.append(row)
            lines.append(line)
    lines += ["", "| network | " + " | ".join(f"x {c} (mean +- sd, seeds)" for c in args.against) + " |"]
    lines.append("|---|" + "---:|" * len(args.against))
    for name in sorted({n for n, _ in ratios}):
        cells = []
        for other in args.against:
            r = ratios.get((name, other), [])
            sd = statistics.stdev(r) if len(r) > 1 else 0.0
            cells.append(f"{statistics.mean(r):.2f} +- {sd:.2f} ({len(r)})" if r else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *per_network(tables)]
    print("\n".join(lines))
    if args.out:
        summary = {f"{n} x {o}": r for (n, o), r in sorted(ratios.items())}
        write_json_atomic(f"{args.out}.json", {"rows": found, "ratios": summary, "args": vars(args)})
        atomic_write_text(f"{args.out}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
