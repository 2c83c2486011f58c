"""trtexec command building, log parsing on real public logs, and the subprocess path."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from squish_plugin.deploy.trtexec import parse_trtexec_output, resolve_trtexec, run_trtexec, trtexec_command
from squish_plugin.errors import InvalidArgumentError, MissingExtraError

LOGS = Path(__file__).parent / "data" / "trtexec"


def _log(name: str) -> str:
    return (LOGS / name).read_text()


def test_command_fp32_has_paper_shape_and_timing_flags():
    """fp32: --onnx, --shapes input:32x3x224x224, warm-up/duration/avgRuns/percentile, no --fp16 or --explicitBatch."""
    cmd = trtexec_command("m.onnx")
    assert cmd == [
        "/usr/src/tensorrt/bin/trtexec",
        "--onnx=m.onnx",
        "--shapes=input:32x3x224x224",
        "--warmUp=2000",
        "--duration=10",
        "--avgRuns=10",
        "--percentile=90",
    ]
    assert not any("explicitBatch" in a for a in cmd)


def test_command_fp16_iterations_workspace_and_extra_in_order():
    """fp16 adds --fp16; iterations, workspace and extra flags land where trtexec expects them."""
    cmd = trtexec_command(
        "m.onnx",
        trtexec="trtexec",
        batch=8,
        size=112,
        fp16=True,
        iterations=100,
        workspace_mb=1024,
        extra=("--useSpinWait",),
    )
    assert cmd == [
        "trtexec",
        "--onnx=m.onnx",
        "--shapes=input:8x3x112x112",
        "--fp16",
        "--workspace=1024",
        "--warmUp=2000",
        "--duration=10",
        "--iterations=100",
        "--avgRuns=10",
        "--percentile=90",
        "--useSpinWait",
    ]


def test_command_without_shapes_for_static_onnx():
    """shapes=False drops --shapes, which trtexec refuses for a fixed-shape ONNX."""
    assert not any(a.startswith("--shapes") for a in trtexec_command("m.onnx", shapes=False))


@pytest.mark.parametrize("kw", [{"batch": 0}, {"size": -1}, {"avg_runs": 1.5}, {"extra": "--fp16"}])
def test_command_rejects_bad_arguments(kw):
    """Bad numbers or a bare string for extra fail with one sentence naming the argument."""
    with pytest.raises(InvalidArgumentError, match=next(iter(kw))):
        trtexec_command("m.onnx", **kw)


def test_parse_trt82_jetson_tx1_log():
    """TensorRT 8.2.1 on a Tegra X1: throughput, host latency, GPU compute, device, version, runs, binding."""
    r = parse_trtexec_output(_log("trt82_jetson_tx1.log"), batch=1)
    assert r["qps"] == 11.0613 and r["images_per_second"] == pytest.approx(11.0613)
    assert r["latency_ms"] == {"median": 90.3035, "p90": None, "mean": 90.3919, "min": 89.312, "max": 91.492}
    assert r["latency_percentiles_ms"] == {"p99": 91.492}
    assert r["gpu_compute_ms"]["median"] == 90.0183
    assert (r["device"], r["tensorrt"]) == ("NVIDIA Tegra X1", "8.2.1")
    assert (r["runs"], r["warmup_runs"], r["input_shape"]) == (35, 2, [1, 3, 288, 800])


def test_parse_images_per_second_is_qps_times_batch():
    """One trtexec query is one whole batch, so images/s = qps * batch."""
    r = parse_trtexec_output(_log("trt84_xavier.log"), batch=32)
    assert r["images_per_second"] == pytest.approx(41087.7 * 32)
    assert r["latency_ms"]["median"] == 0.401947 and r["tensorrt"] == "8.4.0"
    assert r["device"] is None and r["runs"] is None


def test_parse_trt10_thor_log_without_tags():
    """TensorRT 10.13 summary pasted without timestamps: percentile(90/95/99%) fill p90 and the percentile map."""
    r = parse_trtexec_output(_log("trt10_thor.log"), batch=32)
    assert r["qps"] == 1.55139 and r["images_per_second"] == pytest.approx(1.55139 * 32)
    assert r["latency_ms"] == {"median": 640.024, "p90": 664.195, "mean": 644.386, "min": 634.412, "max": 684.747}
    assert r["latency_percentiles_ms"] == {"p90": 664.195, "p95": 666.219, "p99": 684.747}


def test_parse_refuses_a_log_run_at_another_batch():
    """The input binding shows batch 1, so asking for batch 32 fails naming both batches."""
    with pytest.raises(InvalidArgumentError, match=r"batch 1, but batch=32"):
        parse_trtexec_output(_log("trt82_jetson_tx1.log"), batch=32)


def test_parse_failed_build_names_its_error_lines():
    """A failed ONNX parse has no summary; the error quotes trtexec's first and last [E] lines."""
    with pytest.raises(InvalidArgumentError, match="Performance summary") as info:
        parse_trtexec_output(_log("trt86_parse_failed.log"), batch=32)
    assert "Engine set up failed" in str(info.value) and "ModelImporter.cpp:729" in str(info.value)


def test_parse_log_cut_before_summary():
    """A TensorRT 10.16 log that stops after the device block says the summary is missing and no [E] was seen."""
    with pytest.raises(InvalidArgumentError, match="no \\[E\\] error line"):
        parse_trtexec_output(_log("trt10_orin_no_summary.log"), batch=32)


def test_parse_summary_without_throughput():
    """A summary with no Throughput line names that line."""
    text = "=== Performance summary ===\nLatency: min = 1 ms, max = 2 ms, mean = 1.5 ms, median = 1.5 ms\n"
    with pytest.raises(InvalidArgumentError, match="Throughput"):
        parse_trtexec_output(text, batch=32)


def _fake_trtexec(tmp_path: Path, log: str, *, static: bool = False) -> Path:
    """An executable that prints a fixture log (and, if static, rejects --shapes as trtexec does)."""
    script = tmp_path / "trtexec"
    reject = (
        (
            "if any(a.startswith('--shapes') for a in sys.argv[1:]):\n"
            "    print('[E] Static model does not take explicit shapes since the shape of inference tensors will be "
            "determined by the model itself'); sys.exit(1)\n"
        )
        if static
        else ""
    )
    script.write_text(
        f"#!{sys.executable}\nimport sys\n{reject}"
        f"open({str(tmp_path / 'argv.txt')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"sys.stdout.write(open({str(LOGS / log)!r}).read())\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_run_trtexec_runs_the_executable_and_fills_the_schema(tmp_path):
    """The subprocess path for real: a fake trtexec prints the TX1 log; the result is bench-v1 with its device."""
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    exe = _fake_trtexec(tmp_path, "trt82_jetson_tx1.log")
    r = run_trtexec(onnx, model="ancestor", trtexec=exe, batch=1, precision="fp16", log_path=tmp_path / "raw.log")
    assert r["schema"] == "squish-plugin/bench-v1" and r["backend"] == "trtexec" and r["precision"] == "fp16"
    assert (r["model"], r["batch"], r["input_size"]) == ("ancestor", 1, 224)
    assert r["images_per_second"] == pytest.approx(11.0613)
    assert r["env"]["device"] == "NVIDIA Tegra X1" and r["env"]["tensorrt"] == "8.2.1"
    assert "--fp16" in (tmp_path / "argv.txt").read_text()
    assert (tmp_path / "raw.log").read_text() == _log("trt82_jetson_tx1.log")


def test_run_trtexec_retries_without_shapes_for_a_static_onnx(tmp_path):
    """When trtexec refuses --shapes for a fixed-shape ONNX, it is run again without it."""
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    exe = _fake_trtexec(tmp_path, "trt84_xavier.log", static=True)
    r = run_trtexec(onnx, model="m", trtexec=exe)
    assert r["images_per_second"] == pytest.approx(41087.7 * 32)
    assert "--shapes" not in r["env"]["command"][2]


def test_missing_trtexec_is_one_sentence(tmp_path, monkeypatch):
    """No $TRTEXEC, no /usr/src/tensorrt/bin/trtexec and nothing on PATH: a MissingExtraError sentence."""
    monkeypatch.delenv("TRTEXEC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("squish_plugin.deploy.trtexec.DEFAULT_TRTEXEC", str(tmp_path / "none"))
    with pytest.raises(MissingExtraError, match=r"^trtexec was not found .*\.$"):
        resolve_trtexec()


def test_trtexec_env_var_pointing_nowhere(monkeypatch, tmp_path):
    """$TRTEXEC naming a missing file is reported as such, not silently skipped."""
    monkeypatch.setenv("TRTEXEC", str(tmp_path / "nope"))
    with pytest.raises(MissingExtraError, match=r"\$TRTEXEC names"):
        resolve_trtexec()


def test_trtexec_env_var_is_used(monkeypatch, tmp_path):
    """$TRTEXEC wins over the default location and PATH."""
    exe = _fake_trtexec(tmp_path, "trt84_xavier.log")
    monkeypatch.setenv("TRTEXEC", str(exe))
    assert resolve_trtexec() == str(exe)
    assert os.access(resolve_trtexec(), os.X_OK)
