"""trtexec command building, log parsing on real public logs, and the subprocess path."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from squish_plugin.deploy.trtexec import (
    parse_trtexec_output,
    parse_trtexec_summary,
    resolve_trtexec,
    run_trtexec,
    trtexec_command,
)
from squish_plugin.errors import InvalidArgumentError, MissingExtraError

LOGS = Path(__file__).parent / "data" / "trtexec"

#: A TensorRT 7.x trtexec log, written for these tests in the format of the real ones
#: posted publicly (NVIDIA/TensorRT issues #1221 and #1243, labelled "Release: 7.x"):
#: no "=== Performance summary ===", but a "Host Latency" block of "min:/max:/mean:/
#: median:/percentile:" lines, a lower-case "throughput: N qps", "walltime", then
#: "Enqueue Time" and "GPU Compute" blocks; the RUNNING line has no version tag.
_RUN7 = "./trtexec --onnx=squeezenet.onnx --explicitBatch --shapes=input:32x3x224x224 --fp16"
TRT7_LOG = "\n".join(
    [f"&&&& RUNNING TensorRT.trtexec # {_RUN7}"]
    + [
        f"[11/20/2020-10:18:10] [I] {line}"
        for line in (
            "=== Model Options ===",
            "Format: ONNX",
            "Model: squeezenet.onnx",
            "=== Build Options ===",
            "Max batch: explicit",
            "Workspace: 16 MB",
            "Precision: FP32+FP16",
            "=== Inference Options ===",
            "Batch: Explicit",
            "Input inference shape: input=32x3x224x224",
            "Iterations: 10",
            "Duration: 3s (+ 200ms warm up)",
            "Starting inference threads",
            "Warmup completed 3 queries over 200 ms",
            "Timing trace has 48 queries over 3.04321 s",
            "Trace averages of 10 runs:",
            "Average on 10 runs - GPU latency: 62.1472 ms - Host latency: 63.3012 ms (end to end 124.95 ms, "
            "enqueue 2.10376 ms)",
            "Average on 10 runs - GPU latency: 62.0914 ms - Host latency: 63.2477 ms (end to end 124.833 ms, "
            "enqueue 2.08911 ms)",
            "Host Latency",
            "min: 62.9033 ms (end to end 123.812 ms)",
            "max: 64.1182 ms (end to end 126.027 ms)",
            "mean: 63.2761 ms (end to end 124.881 ms)",
            "median: 63.2617 ms (end to end 124.872 ms)",
            "percentile: 64.0356 ms at 99% (end to end 125.944 ms at 99%)",
            "throughput: 15.7729 qps",
            "walltime: 3.04321 s",
            "Enqueue Time",
            "min: 1.93359 ms",
            "max: 2.41797 ms",
            "median: 2.09448 ms",
            "GPU Compute",
            "min: 61.7461 ms",
            "max: 62.9287 ms",
            "mean: 62.1225 ms",
            "median: 62.1089 ms",
            "percentile: 62.8301 ms at 99%",
            "total compute time: 2.98188 s",
        )
    ]
    + [f"&&&& PASSED TensorRT.trtexec # {_RUN7}", ""]
)


def _log(name: str) -> str:
    return (LOGS / name).read_text()


def renamed_tx1_log(name: str) -> str:
    """The real TX1 log (batch 1) as trtexec prints it for an ONNX whose input is ``name``."""
    return (
        _log("trt82_jetson_tx1.log")
        .replace("for input input", f"for input {name}")
        .replace("binding for input with", f"binding for {name} with")
    )


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
    assert r["qps"] == 11.0613 and r["throughput_ips"] == pytest.approx(11.0613)
    assert r["latency_ms"] == {"median": 90.3035, "p90": None, "mean": 90.3919, "min": 89.312, "max": 91.492}
    assert r["latency_percentiles_ms"] == {"p99": 91.492}
    assert r["gpu_compute_ms"]["median"] == 90.0183
    assert (r["device"], r["tensorrt"]) == ("NVIDIA Tegra X1", "8.2.1")
    assert (r["runs"], r["warmup_runs"], r["input_shape"]) == (35, 2, [1, 3, 288, 800])


def test_parse_gives_both_images_per_second_figures():
    """One trtexec query is one whole batch: throughput_ips = qps x the confirmed batch; latency_ips =
    batch / median host latency, and images_per_second is latency_ips, as for every backend."""
    r = parse_trtexec_output(_log("trt82_jetson_tx1.log"), batch=1)
    assert r["throughput_ips"] == pytest.approx(11.0613 * 1)
    assert r["latency_ips"] == pytest.approx(1 / 90.3035e-3)
    assert r["images_per_second"] == r["latency_ips"] and r["images_per_second_is"] == "latency_ips"


def test_parse_summary_of_a_xavier_excerpt():
    """TensorRT 8.4 summary excerpt: throughput, latency and version read without any batch."""
    r = parse_trtexec_summary(_log("trt84_xavier.log"))
    assert r["qps"] == 41087.7 and r["latency_ms"]["median"] == 0.401947 and r["tensorrt"] == "8.4.0"
    assert r["device"] is None and r["runs"] is None and "images_per_second" not in r


def test_parse_refuses_a_log_that_does_not_confirm_the_batch():
    """The Xavier excerpt has no input binding line (it ran an implicit --batch=16 engine): its qps is never
    multiplied by the batch=32 asked; the error says the batch cannot be confirmed."""
    with pytest.raises(InvalidArgumentError, match=r"no input binding line for any input, so batch=32 cannot be"):
        parse_trtexec_output(_log("trt84_xavier.log"), batch=32)


def test_parse_refuses_a_log_whose_binding_is_another_input():
    """Asked for input 'images', a log that only binds 'input' cannot confirm the batch; both names are given."""
    with pytest.raises(InvalidArgumentError, match=r"for input 'images' \(it has one for 'input' only\)"):
        parse_trtexec_output(_log("trt82_jetson_tx1.log"), batch=1, input_name="images")


def test_parse_trt10_thor_log_without_tags():
    """TensorRT 10.13 summary pasted without timestamps: percentile(90/95/99%) fill p90 and the percentile map."""
    r = parse_trtexec_summary(_log("trt10_thor.log"))
    assert r["qps"] == 1.55139
    assert r["latency_ms"] == {"median": 640.024, "p90": 664.195, "mean": 644.386, "min": 634.412, "max": 684.747}
    assert r["latency_percentiles_ms"] == {"p90": 664.195, "p95": 666.219, "p99": 684.747}


def test_parse_names_a_tensorrt7_log_as_an_unsupported_version():
    """A TensorRT 7.x log (a 'Host Latency' block, no '=== Performance summary ===') is refused as an
    unsupported trtexec version, not as a run cut short."""
    for parse in (lambda text: parse_trtexec_output(text, batch=32), parse_trtexec_summary):
        with pytest.raises(InvalidArgumentError, match=r"unsupported trtexec version, TensorRT 7\.x") as info:
            parse(TRT7_LOG)
        assert "cut short" not in str(info.value) and "TensorRT 8.2 on" in str(info.value)


def test_parse_refuses_a_log_run_at_another_batch():
    """The input binding shows batch 1, so asking for batch 32 fails naming the input and both batches."""
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
    """An executable that records its arguments, then prints a log (a fixture's name, or the text itself)
    or, if static, rejects --shapes as trtexec does for a fixed-shape ONNX."""
    script = tmp_path / "trtexec"
    text = tmp_path / "printed.log"
    text.write_text(_log(log) if (LOGS / log).is_file() else log)
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
        f"#!{sys.executable}\nimport sys\n"
        f"open({str(tmp_path / 'argv.txt')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n{reject}"
        f"sys.stdout.write(open({str(text)!r}).read())\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _onnx(tmp_path: Path, name: str = "input", dims=("batch", 3, 224, 224)) -> Path:
    """A one-node ONNX file (Identity) whose input is ``name`` with ``dims`` (a string is a dynamic axis)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["logits"])],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(dims))],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _argv(tmp_path: Path) -> list[str]:
    return (tmp_path / "argv.txt").read_text().splitlines()


def test_run_trtexec_runs_the_executable_and_fills_the_schema(tmp_path):
    """The subprocess path for real: a fake trtexec prints the TX1 log; the result is bench-v1 with its device,
    both images/s figures and images_per_second = batch / median latency."""
    exe = _fake_trtexec(tmp_path, "trt82_jetson_tx1.log")
    r = run_trtexec(
        _onnx(tmp_path), model="ancestor", trtexec=exe, batch=1, precision="fp16", log_path=tmp_path / "raw.log"
    )
    assert r["schema"] == "squish-plugin/bench-v1" and r["backend"] == "trtexec" and r["precision"] == "fp16"
    assert (r["model"], r["batch"], r["input_size"]) == ("ancestor", 1, 224)
    assert r["images_per_second"] == r["latency_ips"] == pytest.approx(1 / 90.3035e-3)
    assert r["images_per_second_is"] == "latency_ips" and r["throughput_ips"] == pytest.approx(11.0613)
    assert r["env"]["device"] == "NVIDIA Tegra X1" and r["env"]["tensorrt"] == "8.2.1"
    assert "--fp16" in _argv(tmp_path)[0] and "--shapes=input:1x3x224x224" in _argv(tmp_path)[0]
    assert (tmp_path / "raw.log").read_text() == _log("trt82_jetson_tx1.log")


def test_run_trtexec_takes_the_input_name_from_the_onnx(tmp_path):
    """An ONNX whose input is 'images': --shapes names 'images' and the log's 'images' binding confirms batch 1."""
    exe = _fake_trtexec(tmp_path, renamed_tx1_log("images"))
    r = run_trtexec(_onnx(tmp_path, "images"), model="m", trtexec=exe, batch=1)
    assert "--shapes=images:1x3x224x224" in _argv(tmp_path)[0]
    assert r["trtexec"]["input_shape"] == [1, 3, 288, 800] and r["throughput_ips"] == pytest.approx(11.0613)


def test_run_trtexec_refuses_a_batch_the_log_does_not_confirm(tmp_path):
    """The issue's case: input 'images', engine at batch 1, batch=32 asked. The qps is not multiplied by 32;
    the error names the model, the input and both batches."""
    exe = _fake_trtexec(tmp_path, renamed_tx1_log("images"))
    with pytest.raises(InvalidArgumentError, match=r"model 'ancestor'.*input 'images' as 1x3x288x800, i\.e\. batch 1"):
        run_trtexec(_onnx(tmp_path, "images"), model="ancestor", trtexec=exe, batch=32)


def test_run_trtexec_runs_a_static_onnx_without_shapes_once(tmp_path):
    """A fixed-shape ONNX (1x3x224x224) at batch=1 runs once, without --shapes (which trtexec refuses there)."""
    exe = _fake_trtexec(tmp_path, renamed_tx1_log("images"), static=True)
    r = run_trtexec(_onnx(tmp_path, "images", (1, 3, 224, 224)), model="m", trtexec=exe, batch=1)
    assert len(_argv(tmp_path)) == 1 and "--shapes" not in _argv(tmp_path)[0]
    assert r["throughput_ips"] == pytest.approx(11.0613) and r["batch"] == 1


def test_run_trtexec_refuses_a_static_onnx_at_another_batch(tmp_path):
    """A static batch-1 engine is never reported as batch 32: the fixed ONNX shape is refused before trtexec runs."""
    exe = _fake_trtexec(tmp_path, renamed_tx1_log("images"), static=True)
    with pytest.raises(InvalidArgumentError, match=r"model 'm' .* has the input shape 1x3x224x224, which does not fit"):
        run_trtexec(_onnx(tmp_path, "images", (1, 3, 224, 224)), model="m", trtexec=exe, batch=32)
    assert not (tmp_path / "argv.txt").exists()


def test_run_trtexec_checks_the_input_name_it_is_given(tmp_path):
    """input_name= that is not the ONNX's input is refused, naming both."""
    exe = _fake_trtexec(tmp_path, "trt82_jetson_tx1.log")
    with pytest.raises(InvalidArgumentError, match=r"input_name='data' is not the input of 'm'; its input is 'input'"):
        run_trtexec(_onnx(tmp_path), model="m", trtexec=exe, batch=1, input_name="data")


def test_run_trtexec_without_onnx_names_the_extra(tmp_path, monkeypatch):
    """Without the onnx package the input cannot be read: a MissingExtraError naming the export extra."""
    path = _onnx(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'squish-plugin\[export\]'\.$"):
        run_trtexec(path, model="m", trtexec=_fake_trtexec(tmp_path, "trt82_jetson_tx1.log"), batch=1)


def test_run_trtexec_refuses_a_file_onnx_cannot_read(tmp_path):
    """A file that is not ONNX is named in one sentence."""
    pytest.importorskip("onnx")
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"onnx")
    with pytest.raises(InvalidArgumentError, match=r"m\.onnx' could not be read by onnx"):
        run_trtexec(bad, model="m", trtexec=_fake_trtexec(tmp_path, "trt82_jetson_tx1.log"), batch=1)


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
