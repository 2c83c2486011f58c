"""The latency table on a Jetson TX1 (TensorRT 8.2): what the kit times there, and how the
device's profiles become a :class:`~squish_plugin.synthesis.latency.LatencyTable` again.

TensorRT 8.2 times layers through trtexec's profiler: ``--dumpProfile --separateProfileRun
--exportProfile=FILE`` writes after the timed run a JSON list whose first element is
``{"count": N}`` (inferences profiled) and every other one engine layer, ``{"name",
"timeMs", "averageMs", "percentage"}`` (``averageMs``: per inference, i.e. per batch; the
format NVIDIA's ``samples/trtexec/profiler.py`` reads). An engine per grid point would take
hours to build on a TX1, so the grid points of each geometry that keeps the spatial size
(stride 1, "same" padding: all of SqueezeNet's but conv1) are strung into one *chain*
network -- each Conv+Relu of the chain one (cin, cout) pair, with a link layer where two
pairs do not meet -- and one profile times them all; a layer that changes the size (conv1)
gets one small network per grid point. Nodes are named ``sq_L<k>`` (TensorRT names a fused
layer after its nodes, ``sq_L3 + sq_L3_relu``), so each profile row maps back to its grid
point; reformatting layers are left to the calibration: the set of whole networks a CPU
table is calibrated on (trtexec's summary, host latency per batch), which also chooses
``round_to`` and fits the table's scale, offset and off-lattice factor as on the CPU.

Example:
    >>> from squish_plugin.deploy.latency.kit import chain_widths
    >>> chain_widths([(16, 32), (32, 16), (64, 16)])
    [16, 32, 16, 64, 16]
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import InvalidArgumentError
from ...synthesis.latency import GRID_POINTS, LatencyTable, LayerGeometry, LayerGrid, layer_geometry
from .grid import ROUND_TO_CANDIDATES, calibration_members, calibration_networks, layer_grids
from .timers import conv_relu_chain, out_hw

__all__ = ["PLAN_FORMAT", "chain_widths", "latency_kit", "parse_profile", "table_from_results"]

PLAN_FORMAT = "squish-plugin/latency-kit-v2"  # v2: the calibration set the CPU's tables use
NODE = re.compile(r"sq_L(\d+)(?![\d])")
KIT_STEP = 8  # the kit's grid lies on multiples of 8: 16- and 32-lattices are on it too


def chain_widths(pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Channel counts of a chain whose consecutive layers visit every ``(cin, cout)`` pair:
    from each width the pair leaving it with the smallest output (unvisited) comes next,
    else a link to the smallest unvisited pair's input (a link is a layer timed too)."""
    todo = sorted(set(pairs))
    if not todo:
        return []
    widths = [todo[0][0]]
    while todo:
        here = widths[-1]
        leaving = [p for p in todo if p[0] == here]
        pair = leaving[0] if leaving else todo[0]
        if pair[0] != here:
            widths.append(pair[0])  # a link here -> pair[0]; timed too, so a needed one counts
            if (here, pair[0]) in todo:
                todo.remove((here, pair[0]))
        widths.append(pair[1])
        todo.remove(pair)
    return widths


def _chains(grids: dict, batch: int) -> tuple[dict[str, bytes], dict[str, dict]]:
    """The networks that time every grid point, and ``{file: {layer index: point}}``."""
    pairs: dict[LayerGeometry, set] = {}
    geos: dict[LayerGeometry, dict] = {}
    for geo, cins, couts in grids.values():
        key = LayerGeometry.of(geo)
        geos[key] = geo
        pairs.setdefault(key, set()).update((a, b) for a in cins for b in couts)
    files, points, k = {}, {}, 0
    for n, key in enumerate(sorted(pairs, key=_key_str)):
        geo = geos[key]
        keeps_size = geo["op"] == "linear" or tuple(out_hw(geo)) == tuple(geo["in_hw"])
        chains = [chain_widths(sorted(pairs[key]))] if keeps_size else [[a, b] for a, b in sorted(pairs[key])]
        for c, widths in enumerate(chains):
            name = f"latency/g{n:02d}_{c:02d}.onnx"
            files[name] = conv_relu_chain(geo, widths, batch, k)
            points[name] = {str(k + i): [_key_str(key), a, b] for i, (a, b) in enumerate(zip(widths, widths[1:]))}
            k += len(widths) - 1
    return files, points


def _key_str(key: LayerGeometry) -> str:
    """A geometry as the kit's plan writes it (JSON: op, kernel, stride, padding, in_hw)."""
    return json.dumps(list(key.to_dict().values()))


def latency_kit(
    model: nn.Module, *, batch: int = 32, size: int = 224, step: int = KIT_STEP, points: int = GRID_POINTS
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``({kit path: ONNX bytes}, plan)`` for the device: the chains of the grid and, timed
    whole, the calibration set a CPU table uses
    (:func:`~squish_plugin.deploy.latency.calibration_networks` over every ``round_to``
    candidate: the ancestor, it cut to each fraction of every width rounded up to each
    candidate multiple, and the seeded random widths); the chosen multiple's members
    (:func:`~squish_plugin.deploy.latency.calibration_members`) calibrate the table."""
    from ..export import export_onnx

    inputs = torch.zeros(1, 3, size, size)
    grids = layer_grids(model, inputs, step, points)
    files, timed = _chains(grids, batch)
    whole = calibration_networks(model, ROUND_TO_CANDIDATES, inputs)
    networks = {}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, net in whole.items():
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(net.eval(), path, batch=batch, size=size)
            files[f"latency/{name}.onnx"] = path.read_bytes()
            widths = {n: [g["cin"], g["cout"]] for n, g in layer_geometry(net, inputs).items()}
            networks[f"latency/{name}.onnx"] = {"widths": widths}
    plan = {
        "format": PLAN_FORMAT,
        "batch": batch,
        "input_size": size,
        "step": step,
        "grid_points": points,
        "layers": {n: {**_geo_json(g), "cin": list(ci), "cout": list(co)} for n, (g, ci, co) in grids.items()},
        "profiled": timed,
        "whole": networks,
    }
    return files, plan


def _geo_json(geo: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in geo.items() if k not in ("cin", "cout")}


def parse_profile(text: str, source: str = "profile") -> dict[int, float]:
    """``{layer index: ms per inference}`` from a trtexec ``--exportProfile`` JSON: rows
    whose name holds one ``sq_L<k>`` node (fused Conv+Relu: one row), reformatting rows
    and rows of several grid layers left out."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{source} is not JSON ({exc}).") from None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "count" not in data[0]:
        raise InvalidArgumentError(f"{source} is not a trtexec profile (a list starting with {{'count': N}}).")
    times: dict[int, float] = {}
    for row in data[1:]:
        if not isinstance(row, dict) or "name" not in row or "averageMs" not in row:
            raise InvalidArgumentError(f"{source} has a layer row without 'name' and 'averageMs'.")
        name = str(row["name"])
        found = {int(k) for k in NODE.findall(name)}
        if len(found) != 1 or name.lower().startswith("reformat"):
            continue
        (k,) = found
        times[k] = times.get(k, 0.0) + float(row["averageMs"])
    return times


def table_from_results(results_dir: str | Path, precision: str = "fp16") -> LatencyTable:
    """The latency table of the kit's ``precision`` runs in ``results_dir`` (the kit's
    ``results`` folder brought back): every grid point from the chain profiles, ``round_to``
    chosen from the candidates' times by the rule of
    :func:`~squish_plugin.deploy.latency.choose_round_to`, and the whole-network terms fitted
    (:func:`~squish_plugin.deploy.latency.calibration.fit_splits`) on the calibration set's
    members for that multiple (:func:`~squish_plugin.deploy.latency.calibration_members`)."""
    from ..trtexec import parse_trtexec_output
    from .calibration import fit_splits
    from .grid import round_to_from_times

    folder = Path(results_dir) / "latency"
    plan = _read_plan(folder / "plan.json")
    timed: dict[tuple, float] = {}
    for name, points in sorted(plan["profiled"].items()):
        path = folder / f"{Path(name).stem}_{precision}.profile.json"
        if not path.is_file():
            raise InvalidArgumentError(f"the kit's profile '{path}' is missing: run run_latency.sh on the device.")
        times = parse_profile(path.read_text(), f"profile '{path}'")
        for k, (key, cin, cout) in points.items():
            if int(k) not in times:
                raise InvalidArgumentError(f"profile '{path}' has no row for layer sq_L{k} ({cin} -> {cout}).")
            timed[(key, cin, cout)] = times[int(k)]
    whole, widths = {}, {}
    for name, net in plan["whole"].items():
        log = folder / f"{Path(name).stem}_{precision}.trtexec.log"
        if not log.is_file():
            raise InvalidArgumentError(f"the kit's log '{log}' is missing: run run_latency.sh on the device.")
        whole[Path(name).stem] = parse_trtexec_output(log.read_text(), batch=plan["batch"])["latency_ms"]["median"]
        widths[Path(name).stem] = net["widths"]
    round_to, figures = round_to_from_times(whole, ROUND_TO_CANDIDATES)
    layers = {name: _grid(g, timed, round_to) for name, g in plan["layers"].items()}
    target = {"backend": "trtexec", "device": "the kit's device", "precision": precision, "batch": plan["batch"]}
    notes = {"round_to_figures": figures, "timed_layers": len(timed)}
    table = LatencyTable(
        target={**target, "input_size": plan["input_size"]},
        layers=layers,
        round_to=round_to,
        notes=notes,
        below_grid="extrapolate",
    )
    calib = calibration_members(whole, round_to)
    splits = {n: table.split_ms((k, *w) for k, w in sorted(widths[n].items())) for n in calib}
    return fit_splits(table, splits, {n: whole[n] for n in calib})


def _grid(g: dict[str, Any], timed: dict[tuple, float], round_to: int) -> LayerGrid:
    """One layer's grid on the ``round_to`` lattice (and its full widths): widths off it
    never occur in the study, and a slow off-lattice point must not lift the lattice's
    times when the grid is made monotone."""
    key = _key_str(LayerGeometry.of(g))

    def lattice(widths: list[int]) -> tuple[int, ...]:
        return tuple(w for w in widths if w % round_to == 0 or w == widths[-1])

    cins, couts = lattice(g["cin"]), lattice(g["cout"])
    rows = tuple(tuple(timed[(key, a, b)] for b in couts) for a in cins)
    return LayerGrid(geometry=LayerGeometry.of(g), cin=cins, cout=couts, ms=rows)


def _read_plan(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InvalidArgumentError(f"'{path}' is missing: the results come from a kit made with --latency.")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"'{path}' is not JSON ({exc}).") from None
    older = isinstance(plan, dict) and str(plan.get("format", "")).startswith("squish-plugin/latency-kit-")
    if older and plan["format"] != PLAN_FORMAT:
        raise InvalidArgumentError(
            f"'{path}' is a {plan['format']!r} plan, from an older kit: make the kit again "
            f"(bench kit --latency) and run it ({PLAN_FORMAT!r} expected)."
        )
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise InvalidArgumentError(f"'{path}' is not a latency kit plan ({PLAN_FORMAT!r} expected).")
    return plan


def latency_script(plan: dict[str, Any], precisions: Sequence[str]) -> str:
    """``run_latency.sh``: trtexec's per-layer profile of every chain, then the whole
    networks' summaries, per precision; everything lands in ``results/latency/``."""
    import shlex

    from ..trtexec import trtexec_command

    lines = [
        "#!/bin/sh",
        "# Generated by squish-plugin (bench kit --latency): the latency table's measurements on this device.",
        "# Then, on the workstation: squish-plugin bench collect results --latency-table latency_table.json",
        'cd "$(dirname "$0")" || exit 1',
        'TRTEXEC="${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}"',
        'if [ ! -x "$TRTEXEC" ]; then',
        '  TRTEXEC="$(command -v trtexec)" || { echo "trtexec not found: set TRTEXEC=/path/to/trtexec" >&2; exit 1; }',
        "fi",
        "mkdir -p results/latency && cp latency/plan.json results/latency/",
    ]
    short = {"warmup_ms": 500, "duration_s": 3, "avg_runs": 10, "workspace_mb": 1024, "shapes": False}
    for precision in precisions:
        for name in sorted(plan["profiled"]):
            stem = Path(name).stem
            out = f"results/latency/{stem}_{precision}"
            extra = ("--dumpProfile", "--separateProfileRun", f"--exportProfile={out}.profile.json")
            args = trtexec_command(name, fp16=precision == "fp16", extra=extra, **short)[1:]
            lines += [f'echo "== {stem} {precision} (profile)"', f'"$TRTEXEC" {shlex.join(args)} > {out}.log 2>&1']
        for name in sorted(plan["whole"]):
            stem = Path(name).stem
            args = trtexec_command(name, fp16=precision == "fp16", **short)[1:]
            log = f"results/latency/{stem}_{precision}.trtexec.log"
            lines += [f'echo "== {stem} {precision}"', f'"$TRTEXEC" {shlex.join(args)} > {log} 2>&1']
    return "\n".join([*lines, 'echo "done: results/latency/"', ""])
