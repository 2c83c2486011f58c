"""The TX1 kit's latency table, round trip: kit -> a fake trtexec on the "device" (profiles
in the format NVIDIA's samples/trtexec/profiler.py reads; summaries as TensorRT 8.2's real
TX1 log in tests/data/trtexec) -> bench collect -> a recipe drawing against the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _helpers import QUICK, set_args
from squish_plugin import squeezenet1_1_ancestor
from squish_plugin.cli import app
from squish_plugin.deploy.kit import make_kit
from squish_plugin.deploy.latency.kit import chain_widths, latency_kit, parse_profile, table_from_results
from squish_plugin.errors import InvalidArgumentError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TX1_LOG = Path(__file__).parent / "data" / "trtexec" / "trt82_jetson_tx1.log"
SIZE = 64
runner = CliRunner()

FAKE_TRTEXEC = r'''#!{python}
"""A stand-in for trtexec 8.2: per-layer profile rows for the chain's sq_L<k> layers
(and a reformatting row), or the TX1 log's summary with this network's batch and time.
Layers are computed in blocks of 16 channels and run 2x slower off multiples of 16."""
import json, re, sys
import onnx
from onnx import numpy_helper, shape_inference

args = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in sys.argv[1:])
model = shape_inference.infer_shapes(onnx.load(args["onnx"]))
shapes = {{v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
          for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}}
weights = {{i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}}
slow = 1.0 if "fp16" in args else 2.0
rows = []
for node in model.graph.node:
    if node.op_type in ("Conv", "Gemm"):
        w = weights[node.input[1]]
        out = shapes.get(node.output[0], [1, w[0], 1, 1])
        hw = out[2] * out[3] if len(out) == 4 else 1
        k = w[2] * w[3] if len(w) == 4 else 1
        aligned = w[0] % 16 == 0 and (w[1] % 16 == 0 or w[1] == 3)
        blocks = max(w[0], 16) * max(w[1], 16)  # computed in blocks of 16 channels
        rows.append((node.name, slow * (1e-4 * k * blocks * hw / 1e3 + 0.01) * (1 if aligned else 2)))
if "exportProfile" in args:
    prof = [{{"count": 50}}, {{"name": "Reformatting CopyNode for Input Tensor 0 to " + rows[0][0], "timeMs": 1.0,
             "averageMs": 0.02, "percentage": 1.0}}]
    prof += [{{"name": n + " + " + n + "_relu", "timeMs": 50 * t, "averageMs": t, "percentage": 1.0}} for n, t in rows]
    open(args["exportProfile"], "w").write(json.dumps(prof))
    print("[I] profile written")
else:
    batch = shapes[model.graph.input[0].name][0]
    total = 0.3 + sum(t for _, t in rows)
    log = open({log!r}).read().replace("1x3x288x800", "%dx3x{size}x{size}" % batch)
    log = re.sub(r"(\] Latency: .*?median = )[0-9.]+", lambda m: m.group(1) + "%.4f" % total, log)
    print(log)
'''


@pytest.fixture(scope="module")
def device_results(tmp_path_factory):
    """A --latency kit for the 10-class ancestor at 64 px, run on the fake device."""
    tmp = tmp_path_factory.mktemp("kit")
    model = squeezenet1_1_ancestor(num_classes=10, weights=None).eval()
    onnx_path = tmp / "ancestor.onnx"
    torch.onnx.export(model, torch.zeros(4, 3, SIZE, SIZE), str(onnx_path), dynamo=False, opset_version=13)
    kit = make_kit(
        {"ancestor": onnx_path},
        tmp / "kit",
        batch=4,
        size=SIZE,
        precisions=("fp16",),
        latency=latency_kit(model, batch=4, size=SIZE),
    )
    fake = tmp / "trtexec"
    fake.write_text(FAKE_TRTEXEC.format(python=sys.executable, log=str(TX1_LOG), size=SIZE))
    fake.chmod(0o755)
    done = subprocess.run(
        ["sh", str(kit / "run_latency.sh")],
        env={**os.environ, "TRTEXEC": str(fake)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return kit / "results"


def test_chain_visits_every_pair_with_links_where_pairs_do_not_meet():
    pairs = [(8, 16), (16, 8), (8, 8), (24, 16)]
    widths = chain_widths(pairs)
    visited = set(zip(widths, widths[1:]))
    assert set(pairs) <= visited and len(widths) - 1 <= 2 * len(pairs)


def test_profile_rows_map_to_grid_layers():
    text = json.dumps(
        [
            {"count": 10},
            {"name": "Reformatting CopyNode for Input Tensor 0 to sq_L0 + sq_L0_relu", "averageMs": 0.5},
            {"name": "sq_L0 + sq_L0_relu", "timeMs": 3.0, "averageMs": 0.3, "percentage": 60},
            {"name": "sq_L12 + sq_L12_relu", "timeMs": 2.0, "averageMs": 0.2, "percentage": 40},
        ]
    )
    assert parse_profile(text) == {0: 0.3, 12: 0.2}
    with pytest.raises(InvalidArgumentError, match="not a trtexec profile"):
        parse_profile(json.dumps({"layers": []}))


def test_collected_table_has_every_grid_point_the_devices_round_to_and_its_calibration(device_results):
    table = table_from_results(device_results, "fp16")
    plan = json.loads((device_results / "latency" / "plan.json").read_text())
    assert sorted(table.layers) == sorted(plan["layers"])
    assert table.round_to == 16  # the fake device runs widths off 16 twice as slowly
    assert table.target["backend"] == "trtexec" and table.target["precision"] == "fp16"
    fit = table.notes["calibration"]  # one fit over the networks on and off the lattice
    assert any(r["off_lattice_ms"] == 0 for r in fit.values()) and any(r["on_lattice_ms"] == 0 for r in fit.values())
    # the whole networks take their layers' time + 0.3 ms, the round1 networks' odd widths 2x
    # (random widths and the lineages' small layers below the grid's first point are extrapolated
    # where this fake prices them as 16: the offset within 0.05 ms)
    assert (table.scale, table.off_lattice) == pytest.approx((1.0, 2.0), rel=0.05)
    assert table.offset_ms == pytest.approx(0.3, abs=0.05)
    # every lattice cut within 1% (the fit weighs relative errors, so the networks with widths under
    # the grid, priced as 16 by this fake device and extrapolated by the table, pull it a little:
    # the lineages' last offspring most); every network within 6%
    assert all(abs(r["error"]) < 0.01 for n, r in fit.items() if n.startswith(("round16-", "ancestor")))
    assert all(abs(r["error"]) < 0.06 for r in fit.values())
    with pytest.raises(InvalidArgumentError, match="missing"):
        table_from_results(device_results, "fp32")  # the kit ran fp16 only


def test_the_collected_table_drives_a_study(tmp_path, device_results):
    """bench collect --latency-table, then a recipe with latency.backend file draws offspring
    against it: ~env of the parent's latency on the device, widths on its round_to."""
    table = tmp_path / "tx1_fp16.json"
    result = runner.invoke(app, ["bench", "collect", str(device_results), "--latency-table", str(table)])
    assert result.exit_code == 0, result.output
    sets = {
        **QUICK,
        "evolution.generations": 1,
        "data.train_size": SIZE,
        "data.eval_size": SIZE,
        "evolution.resource": "latency",
        "evolution.round_to": "auto",
        "evolution.size_tolerance": 0.03,
        "evolution.latency.backend": "file",
        "evolution.latency.table": table,
        "output.dir": tmp_path / "runs",
    }
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), *set_args(sets)])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    recs = json.loads((run / "lineage.json").read_text())["records"]
    assert abs(recs[1]["latency_ms"] / recs[0]["latency_ms"] - 0.9) <= 0.03
    assert all(w % 16 == 0 or w == 10 for w in recs[1]["widths"].values())


def test_one_conv_relu_builder_serves_the_cpu_timer_and_the_kit():
    """A layer the CPU timer times and a link of the kit's chains are the same ONNX: one builder,
    `conv_relu_chain` (two widths: one layer; more: a chain), no second copy in deploy/."""
    import onnx

    from squish_plugin.deploy.latency import timers

    geo = {"op": "conv", "kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "in_hw": (16, 16)}
    one = onnx.load_from_string(timers.conv_relu_chain(geo, [8, 16], batch=4))
    assert [n.op_type for n in one.graph.node] == ["Conv", "Relu"]
    out = one.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in out] == [4, 16, 8, 8]
    chain = onnx.load_from_string(timers.conv_relu_chain(geo | {"stride": (1, 1)}, [8, 16, 24], batch=4, first=5))
    assert [n.name for n in chain.graph.node] == ["sq_L5", "sq_L5_relu", "sq_L6", "sq_L6_relu"]
    deploy = Path(timers.__file__).parents[1]
    builders = [p.relative_to(deploy).as_posix() for p in deploy.rglob("*.py") if 'make_node("Conv"' in p.read_text()]
    assert builders == ["latency/timers.py"]


def test_the_kit_times_the_calibration_set_a_cpu_table_uses(device_results, tmp_path):
    """One calibration set: the kit's whole networks are the CPU's (names and widths), and a
    plan from an older kit (v1: another set) is refused in one sentence naming what to do."""
    from squish_plugin.deploy.latency import ROUND_TO_CANDIDATES, calibration_networks
    from squish_plugin.synthesis.latency import layer_geometry

    plan = json.loads((device_results / "latency" / "plan.json").read_text())
    inputs = torch.zeros(1, 3, SIZE, SIZE)
    model = squeezenet1_1_ancestor(num_classes=10, weights=None)
    shared = calibration_networks(model, ROUND_TO_CANDIDATES, inputs)
    assert sorted(Path(n).stem for n in plan["whole"]) == sorted(shared)
    for name, net in shared.items():
        widths = {n: [g["cin"], g["cout"]] for n, g in layer_geometry(net, inputs).items()}
        assert plan["whole"][f"latency/{name}.onnx"]["widths"] == widths
    old = tmp_path / "results" / "latency"
    old.mkdir(parents=True)
    (old / "plan.json").write_text(json.dumps({**plan, "format": "squish-plugin/latency-kit-v1"}))
    with pytest.raises(InvalidArgumentError, match="older kit: make the kit again"):
        table_from_results(tmp_path / "results")
