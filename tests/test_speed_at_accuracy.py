"""benchmarks/speed_at_accuracy.py (issue #16's G2): each curve's images/s read off at another
network's top-1, by interpolation, never by extrapolation beyond 0.5 point."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed_at_accuracy.py"
spec = importlib.util.spec_from_file_location("speed_at_accuracy", SCRIPT)
speed_at_accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(speed_at_accuracy)


def test_curves_start_at_the_ancestor_and_interpolate_within_their_range():
    rows = [
        {"network": "ancestor", "top1": 94.0, "images_per_second": 100.0},
        {"network": "params squishednet-1", "top1": 90.0, "images_per_second": 80.0},
        {"network": "params squishednet-2", "top1": 80.0, "images_per_second": 200.0},
        {"network": "nni squishednet-1", "top1": float("nan"), "images_per_second": 50.0},  # no top-1
    ]
    curves = speed_at_accuracy.curves(rows)
    assert set(curves) == {"params"} and [p[2] for p in curves["params"]][-1] == "ancestor"
    assert speed_at_accuracy.at_top1(curves["params"], 85.0) == 140.0
    assert speed_at_accuracy.at_top1(curves["params"], 92.0) == 90.0
    assert speed_at_accuracy.at_top1(curves["params"], 79.6) == 200.0  # within 0.5 of its end
    assert speed_at_accuracy.at_top1(curves["params"], 79.0) is None  # no extrapolation


def test_finished_rows_carry_each_networks_finished_top1_and_drop_the_unfinished(tmp_path):
    run = tmp_path / "params-run"
    run.mkdir()
    (run / "finished.json").write_text('{"2": {"top1": 91.5}}')
    data = {
        "args": {"run": [f"params={run}", f"latency={tmp_path / 'not-finished'}"]},
        "rows": [
            {"network": "ancestor", "generation": 0, "top1": 94.0},
            {"network": "params squishednet-1", "generation": 2, "top1": 88.0},
            {"network": "params squishednet-2", "generation": 5, "top1": 85.0},
            {"network": "latency squishednet-1", "generation": 3, "top1": 87.0},
            {"network": "nni squishednet-1", "generation": 2, "top1": 86.0},
        ],
    }
    for row in data["rows"]:
        row["images_per_second"] = 100.0
    top1 = {r["network"]: r["top1"] for r in speed_at_accuracy.finished_rows(data)}
    assert top1["ancestor"] == 94.0 and top1["params squishednet-1"] == 91.5
    assert all(top1[n] != top1[n] for n in ("params squishednet-2", "latency squishednet-1", "nni squishednet-1"))
    assert set(speed_at_accuracy.curves(speed_at_accuracy.finished_rows(data))) == {"params"}
