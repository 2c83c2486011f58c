"""Deployment: ONNX export (opset <= 13, onnxsim, parity, TensorRT 8.2 op check),
the CPU backends, and export/bench of a run directory through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from squish_plugin import InvalidArgumentError, squeezenet1_1_ancestor
from squish_plugin.cli import app
from squish_plugin.deploy.backends import SCHEMA, bench_onnxruntime, bench_pytorch, latency_summary
from squish_plugin.deploy.export import export_onnx, trt_op_support, unsupported_ops
from squish_plugin.deploy.schema import images_per_second_is

onnx = pytest.importorskip("onnx")
runner = CliRunner()


def test_export_squeezenet_opset13_checked_and_trt_compatible(tmp_path):
    """The ancestor exports at opset 13, passes the checker, matches PyTorch (<= 1e-4)
    and uses only operators TensorRT 8.2's parser supports; ceil-mode pools survive."""
    info = export_onnx(squeezenet1_1_ancestor(weights="imagenet"), tmp_path / "a.onnx", size=224)
    assert info["max_abs_diff"] <= 1e-4 and info["unsupported_ops"] == []
    proto = onnx.load(str(tmp_path / "a.onnx"))
    assert proto.opset_import[0].version == 13
    assert {"Conv", "Relu", "MaxPool", "Concat"} <= set(info["ops"])
    assert any(
        a.name == "ceil_mode" and a.i == 1 for n in proto.graph.node if n.op_type == "MaxPool" for a in n.attribute
    )
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "logits"


def test_dynamic_and_fixed_batch(tmp_path):
    model = torchvision.models.squeezenet1_1(num_classes=10)
    export_onnx(model, tmp_path / "dyn.onnx", size=64)
    dims = onnx.load(str(tmp_path / "dyn.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    export_onnx(model, tmp_path / "fix.onnx", size=64, batch=8)
    dims = onnx.load(str(tmp_path / "fix.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 8


def test_op_support_list_flags_unsupported_ops(tmp_path):
    """The op list is data with its source; an op TensorRT 8.2 lacks is reported."""
    data = trt_op_support()
    assert data["max_opset"] == 13 and "onnx-tensorrt" in data["source"] and "Conv" in data["supported"]

    class NonZero(torch.nn.Module):  # torch.nonzero exports as ONNX NonZero, unsupported in TRT 8.2
        def forward(self, x):
            return torch.nonzero(x)

    torch.onnx.export(NonZero(), (torch.ones(1, 3, 4, 4),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=13)
    assert unsupported_ops(tmp_path / "m.onnx") == ["NonZero"]


def test_op_support_is_tensorrt_82_ga_so_xor_is_unsupported(tmp_path):
    """TensorRT 8.2 GA's parser lacks Xor (onnx-tensorrt added it in 8.4 GA): the list leaves it out, an ONNX
    with an Xor node is reported, and the list names the 8.2-GA branch it stands for and how it was read."""
    from onnx import TensorProto, helper

    data = trt_op_support()
    assert "Xor" not in data["supported"] and "Xor" in data["removed"]
    wanted = data["wanted_source"]
    assert (wanted["repository"], wanted["branch"], wanted["file"]) == (
        "onnx/onnx-tensorrt",
        "release/8.2-GA",
        "docs/operators.md",
    )
    assert "009d6541b4ee1fa3f3150cd7cbabe7e56aa54840" in data["source"] and "Changelog.md" in data["source"]
    bools = [helper.make_tensor_value_info(n, TensorProto.BOOL, [2]) for n in ("a", "b", "c")]
    graph = helper.make_graph([helper.make_node("Xor", ["a", "b"], ["c"])], "xor", bools[:2], bools[2:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "xor.onnx"))
    assert unsupported_ops(tmp_path / "xor.onnx") == ["Xor"]


def test_bad_export_arguments(tmp_path):
    model = torchvision.models.squeezenet1_1(num_classes=10)
    with pytest.raises(InvalidArgumentError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", opset=17)
    with pytest.raises(InvalidArgumentError, match="batch"):
        export_onnx(model, tmp_path / "x.onnx", batch=0)


def test_cpu_backends_share_the_schema(tmp_path):
    """PyTorch and ONNX Runtime results: same keys, images/s = batch / median latency (latency_ips, so
    named in images_per_second_is) and a positive wall-time throughput_ips beside it."""
    model = torchvision.models.squeezenet1_1(num_classes=10)
    export_onnx(model, tmp_path / "s.onnx", size=64)
    a = bench_pytorch(model, name="s", batch=4, size=64, warmup=1, runs=3)
    b = bench_onnxruntime(tmp_path / "s.onnx", name="s", batch=4, size=64, warmup=1, runs=3)
    for r in (a, b):
        assert r["schema"] == SCHEMA and r["batch"] == 4 and r["runs"] == 3
        assert r["images_per_second"] == pytest.approx(4 / (r["latency_ms"]["median"] / 1e3))
        assert r["images_per_second"] == r["latency_ips"] and r["images_per_second_is"] == "latency_ips"
        assert r["throughput_ips"] == pytest.approx(4 * 3 / (3 * r["latency_ms"]["mean"] / 1e3))
        assert r["latency_ms"]["min"] <= r["latency_ms"]["median"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["max"]
    assert set(a) == set(b)


def test_latency_summary():
    s = latency_summary([0.001 * i for i in range(1, 11)])
    assert s["median"] == pytest.approx(5.5) and s["p90"] == pytest.approx(9.1) and s["max"] == pytest.approx(10)


def _fake_run(tmp_path: Path) -> Path:
    """A run directory from the real engine on tiny inputs (no training needed here)."""
    from squish_plugin.study.engine import evolve
    from squish_plugin.study.recipe import Recipe

    run = tmp_path / "run"
    evolve(
        squeezenet1_1_ancestor(weights="imagenet"),
        train_fn=lambda m, c: None,
        eval_fn=lambda m: {"top1": 50.0, "top5": 90.0},
        run_dir=run,
        generations=2,
        env=0.6,
        example_inputs=torch.zeros(1, 3, 64, 64),
    )
    recipe = Recipe.model_validate(
        {"name": "t", "data": {"root": str(tmp_path)}, "squishednets": {"sizes_mb": [2.5, 2.0]}}
    )
    import yaml

    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump()))
    return run


def test_export_and_bench_a_run_fill_the_report(tmp_path):
    """export -> bench (onnxruntime, pytorch) -> report's Images/s column filled."""
    run = _fake_run(tmp_path)
    result = runner.invoke(app, ["export", str(run), "--size", "64"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "onnx" / "manifest.json").read_text())
    assert sorted(manifest["models"]) == ["ancestor", "squishednet-1", "squishednet-2"]
    result = runner.invoke(
        app, ["bench", str(run), "--backend", "onnxruntime", "--batch", "4", "--runs", "2", "--warmup", "1"]
    )
    assert result.exit_code == 0, result.output
    stored = json.loads((run / "bench" / "onnxruntime-fp32-b4.json").read_text())
    assert [r["model"] for r in stored] == ["ancestor", "squishednet-1", "squishednet-2"]
    report = (run / "report.md").read_text()
    assert "onnxruntime fp32, batch 4" in report and "images/s = batch / median latency per batch" in report
    table2 = report.split("## Generations")[0]
    assert "| — | 50.00 |" not in table2.split("Ancestor")[1].splitlines()[0]  # speed filled for the ancestor
    result = runner.invoke(
        app, ["bench", str(run), "--backend", "pytorch", "--batch", "2", "--runs", "1", "--warmup", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "pytorch fp32, batch 2" in (run / "report.md").read_text()
    # interleaved rounds: every model timed rounds * runs batches, the rounds recorded
    result = runner.invoke(
        app,
        [
            "bench",
            str(run),
            "--backend",
            "onnxruntime",
            "--batch",
            "4",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    stored = json.loads((run / "bench" / "onnxruntime-fp32-b4.json").read_text())
    assert [r["model"] for r in stored] == ["ancestor", "squishednet-1", "squishednet-2"]
    assert all(r["runs"] == 6 and r["env"]["rounds"] == 3 and r["params"] > 0 for r in stored)


def test_images_per_second_is_names_every_result():
    """A result names its images/s definition; results of earlier versions are read as their backend wrote them
    then (trtexec: qps x batch, a wall-time throughput; the others: batch / median latency)."""
    assert images_per_second_is({"backend": "trtexec", "images_per_second_is": "latency_ips"}) == "latency_ips"
    assert images_per_second_is({"backend": "trtexec"}) == "throughput_ips"
    assert images_per_second_is({"backend": "tensorrt"}) == "latency_ips"


def test_collect_refuses_results_that_mix_definitions(tmp_path):
    """An earlier kit's trtexec result (qps x batch) and a new one (batch / median) are not put in one column."""
    from squish_plugin.study.deployment import collect_into_run

    run, results = tmp_path / "run", tmp_path / "results"
    (run / "onnx").mkdir(parents=True)
    (run / "onnx" / "manifest.json").write_text(
        json.dumps({"models": {"a": {"generation": 0}, "b": {"generation": 1}}})
    )
    results.mkdir()
    lat = {"median": 64.0, "p90": 65.0, "mean": 64.0, "min": 63.0, "max": 66.0}
    old = {"schema": SCHEMA, "model": "a", "backend": "trtexec", "precision": "fp16", "batch": 32, "input_size": 224}
    old.update(images_per_second=480.0, latency_ms=lat, runs=5, warmup_runs=1, env={})
    new = {**old, "model": "b", "images_per_second": 500.0, "latency_ips": 500.0, "throughput_ips": 480.0}
    (results / "a.json").write_text(json.dumps(old))
    (results / "b.json").write_text(json.dumps({**new, "images_per_second_is": "latency_ips"}))
    with pytest.raises(InvalidArgumentError, match=r"mix images/s definitions \(latency_ips, throughput_ips\)"):
        collect_into_run(results, run)
    assert not (run / "bench").exists()


def test_bench_errors_are_sentences(tmp_path):
    run = _fake_run(tmp_path)
    result = runner.invoke(app, ["bench", str(run)])
    assert result.exit_code == 2 and "squish-plugin export" in result.output
    runner.invoke(app, ["export", str(run), "--size", "64"])
    for args, match in [
        (["--backend", "cuda-magic"], "backend must be one of"),
        (["--backend", "onnxruntime", "--precision", "fp16"], "fp32 only"),
        (["--rounds", "0"], "rounds must be an integer >= 1"),
        (["--backend", "trtexec", "--rounds", "2"], "applies to the pytorch and onnxruntime"),
    ]:
        result = runner.invoke(app, ["bench", str(run), *args])
        assert result.exit_code == 2 and match in result.output, result.output
    result = runner.invoke(app, ["bench", "kit", str(run)])
    assert result.exit_code == 2 and "--out" in result.output
    shutil.rmtree(run / "onnx")


def test_kit_then_collect_fill_the_report_with_device_numbers(tmp_path):
    """bench kit -> (device: trtexec logs, parsed by the kit's own script) -> bench collect:
    the report's speed column shows the device's trtexec throughput."""
    import subprocess
    import sys

    run = _fake_run(tmp_path)
    assert runner.invoke(app, ["export", str(run), "--size", "64"]).exit_code == 0
    kit = tmp_path / "kit"
    # the public log below ran at batch 1, so the kit is made for batch 1
    result = runner.invoke(app, ["bench", "kit", str(run), "--out", str(kit), "--batch", "1"])
    assert result.exit_code == 0, result.output
    assert (kit / "run_trtexec.sh").is_file() and (kit / "bench_trt.py").is_file()
    assert sorted(p.name for p in (kit / "models").iterdir()) == [
        "ancestor.onnx",
        "squishednet-1.onnx",
        "squishednet-2.onnx",
    ]
    # stand-in for the Jetson: a real TensorRT 8.2 trtexec log from a Tegra X1 per model
    log = (Path(__file__).parent / "data" / "trtexec" / "trt82_jetson_tx1.log").read_text()
    (kit / "results").mkdir(exist_ok=True)
    for name in ("ancestor", "squishednet-1", "squishednet-2"):
        (kit / "results" / f"{name}_fp16.trtexec.log").write_text(log)
    subprocess.run(
        [sys.executable, "bench_trt.py", "--parse-logs", "results"], cwd=kit, check=True, capture_output=True
    )
    result = runner.invoke(app, ["bench", "collect", str(kit / "results"), "--into", str(run)])
    assert result.exit_code == 0, result.output
    report = (run / "report.md").read_text()
    assert "trtexec fp16" in report and "Tegra X1" in report


def test_machine_load_counts_other_processes_only(monkeypatch):
    """Busy = other processes held >= BUSY_CORES on average: the machine's busy CPU time
    less this process's own, per second of wall time."""
    from squish_plugin.deploy import backends

    for machine, own, busy in (([0.0, 10.0], [0.0, 10.0], False), ([0.0, 10.0], [0.0, 0.0], True)):
        readings, mine = iter(machine), iter(own)
        monkeypatch.setattr(backends, "_busy_seconds", lambda r=readings: next(r))
        monkeypatch.setattr(backends, "_own_cpu", lambda m=mine: next(m))
        with backends.MachineLoad() as load:
            pass
        assert load.record()["busy"] is busy


def test_machine_load_records_time_a_virtual_machines_host_stole(monkeypatch):
    """/proc/stat's 8th column (steal) grew by 5 s: recorded as cores taken away."""
    from squish_plugin.deploy import backends

    steal_seconds = backends._steal_seconds

    for stolen, expect in (([0.0, 5.0], True), ([2.0, 2.0], False)):
        readings = iter(stolen)
        monkeypatch.setattr(backends, "_steal_seconds", lambda r=readings: next(r))
        with backends.MachineLoad() as load:
            pass
        assert (load.record()["stolen_cores"] > 0) is expect
    monkeypatch.setattr(backends, "_cpu_ticks", lambda: [1, 0, 1, 5, 0, 0, 0, 300])
    assert steal_seconds() == 300 / backends._CLOCK_TICKS


def test_bench_warns_and_records_a_busy_machine(tmp_path, monkeypatch):
    from squish_plugin.deploy import backends

    run = _fake_run(tmp_path)
    assert runner.invoke(app, ["export", str(run), "--size", "64"]).exit_code == 0
    monkeypatch.setattr(backends, "BUSY_CORES", -1.0)  # whatever else runs counts as busy
    result = runner.invoke(app, ["bench", str(run), "--backend", "pytorch", "--batch", "2", "--runs", "1"])
    assert result.exit_code == 0 and "warning: the machine was busy" in result.output
    stored = json.loads((run / "bench" / "pytorch-fp32-b2.json").read_text())
    assert all(r["env"]["machine_load"]["busy"] for r in stored)


def test_export_is_all_or_nothing(tmp_path):
    """A truncated checkpoint stops export in one sentence before anything is written: the
    onnx/ folder of an earlier export stays whole, no staging folder is left behind."""
    run = _fake_run(tmp_path)
    assert runner.invoke(app, ["export", str(run), "--size", "64"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (run / "onnx").iterdir()}
    generation = json.loads((run / "onnx" / "manifest.json").read_text())["models"]["squishednet-2"]["generation"]
    records = json.loads((run / "lineage.json").read_text())["records"]
    named = run / records[generation]["checkpoint"]
    named.write_bytes(named.read_bytes()[:100])
    result = runner.invoke(app, ["export", str(run), "--size", "96"])  # would rewrite every file
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in (run / "onnx").iterdir()} == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_onnxruntime_sessions_stop_spinning_when_a_run_returns(tmp_path, monkeypatch):
    """Interleaved timings: every ONNX Runtime session (whole network or one layer) is built with
    force_spinning_stop, so an idle session's threads do not slow the next model timed."""
    ort = pytest.importorskip("onnxruntime")
    from squish_plugin.deploy import backends
    from squish_plugin.deploy.latency.timers import onnxruntime_layer_timer

    seen, real = [], ort.InferenceSession

    def spy(path, opts, **kw):
        seen.append(opts.get_session_config_entry(backends.SPIN_STOP))
        return real(path, opts, **kw)

    export_onnx(torchvision.models.squeezenet1_1(num_classes=10), tmp_path / "s.onnx", size=32)
    monkeypatch.setattr(ort, "InferenceSession", spy)
    run, env = backends.onnxruntime_runner(tmp_path / "s.onnx", batch=1, size=32)
    run()
    geo = {"op": "conv", "kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "in_hw": (4, 4)}
    onnxruntime_layer_timer(batch=1, threads=1, warmup=0, runs=1)(geo, 4, 8)
    assert seen == ["1", "1"] and env["force_spinning_stop"] is True


def test_whole_networks_are_timed_by_their_fastest_round(monkeypatch):
    """bench_interleaved keeps each model's median per round; time_networks (a table's
    calibration, round_to: auto) takes the fastest round, not the median of all batches."""
    from squish_plugin.deploy import backends
    from squish_plugin.deploy.latency import time_networks

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    (res,) = backends.bench_interleaved({"m": model}, backend="pytorch", batch=1, size=16, warmup=0, runs=2, rounds=3)
    assert len(res["round_medians_ms"]) == 3 and min(res["round_medians_ms"]) >= res["latency_ms"]["min"]

    def fake(targets, **kw):
        return [{"model": "m", "latency_ms": {"median": 4.0}, "round_medians_ms": [5.0, 3.0, 4.0]}]

    monkeypatch.setattr(backends, "bench_interleaved", fake)
    assert time_networks({"m": model}, "pytorch", batch=1, threads=1) == {"m": 3.0}
