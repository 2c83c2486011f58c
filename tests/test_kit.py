"""The Jetson kit: files written, shell script sound, template Python-3.6 clean, logs -> results -> collect."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _helpers import tiny_onnx
from squish_plugin.deploy.kit import LOG_MODULE, TEMPLATE, collect_results, make_kit
from squish_plugin.deploy.trtexec import parse_trtexec_output, parse_trtexec_summary
from squish_plugin.errors import InvalidArgumentError
from test_trtexec import TRT7_LOG, renamed_tx1_log

LOGS = Path(__file__).parent / "data" / "trtexec"
MODELS = ("ancestor", "squishednet-1")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture
def kit(tmp_path, onnx_file) -> Path:
    return make_kit({name: onnx_file for name in MODELS}, tmp_path / "kit")


def _template(path: Path = TEMPLATE, name: str = "kit_bench_trt"):
    """The kit's file loaded as the device loads it (by path, not as part of the package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log_module():
    return _template(LOG_MODULE, "kit_trtexec_log")


def test_kit_script_writes_the_package_schema():
    """The device script writes the package's result format: its tag and images/s definition come
    from the log module the package's schema takes them from."""
    from squish_plugin.deploy import schema

    script = _template()
    assert script.SCHEMA == schema.SCHEMA
    assert script.IMAGES_PER_SECOND_IS == schema.IMAGES_PER_SECOND_IS
    assert script.latency_ips(32, 64.0) == schema.latency_ips(32, 64.0)


def test_kit_results_have_the_package_keys():
    """The script's result builder gives the keys and values deploy.schema.bench_result gives."""
    from squish_plugin.deploy import schema

    script = _template()
    args = ("m", "tensorrt", "fp16", 32, 224)
    mine = script.result(*args, {"median": 64.0}, 10, 3, {"device": "x"}, 480.0, extra=1)
    ours = schema.bench_result(
        *args, latency_ms={"median": 64.0}, runs=10, warmup=3, env={"device": "x"}, throughput_ips=480.0, extra=1
    )
    assert {k: v for k, v in mine.items() if k != "env"} == {k: v for k, v in ours.items() if k != "env"}


def test_make_kit_writes_every_file(kit, onnx_file):
    """The kit holds the models, run_trtexec.sh, bench_trt.py (the template) with trtexec_log.py,
    README.md and manifest.json."""
    assert sorted(p.name for p in kit.iterdir()) == [
        "README.md",
        "bench_trt.py",
        "manifest.json",
        "models",
        "run_trtexec.sh",
        "trtexec_log.py",
    ]
    for name in MODELS:
        assert (kit / "models" / f"{name}.onnx").read_bytes() == onnx_file.read_bytes()
    assert (kit / "bench_trt.py").read_text() == TEMPLATE.read_text()
    assert (kit / "trtexec_log.py").read_text() == LOG_MODULE.read_text()
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["models"] == {n: f"models/{n}.onnx" for n in MODELS}
    assert (manifest["batch"], manifest["input_size"], manifest["precisions"]) == (32, 224, ["fp32", "fp16"])
    readme = (kit / "README.md").read_text()
    assert "scp" in readme and "sh run_trtexec.sh" in readme and "squish-plugin bench collect" in readme


def test_script_is_executable_and_covers_every_model_and_precision(kit):
    """run_trtexec.sh is executable, runs trtexec per model x precision with the paper's flags, then parses logs."""
    script = kit / "run_trtexec.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    for name in MODELS:
        for precision in ("fp32", "fp16"):
            assert f"results/{name}_{precision}.trtexec.log" in text
    assert text.count("--shapes=input:32x3x224x224") == 4 and text.count(" --fp16") == 4
    assert "--warmUp=2000 --duration=10 --avgRuns=10 --percentile=90" in text
    assert "${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}" in text and "bench_trt.py --parse-logs results" in text


def test_script_runs_with_a_fake_trtexec(tmp_path, onnx_file):
    """Run end to end with a stand-in trtexec printing a real log: logs and trtexec JSON land in results/."""
    if shutil.which("sh") is None or shutil.which("python3") is None:
        pytest.skip("needs sh and python3")
    kit = make_kit({name: onnx_file for name in MODELS}, tmp_path / "kit", batch=1)  # the TX1 log ran at batch 1
    fake = tmp_path / "trtexec"
    fake.write_text(f"#!/bin/sh\ncat {LOGS / 'trt82_jetson_tx1.log'}\n")
    fake.chmod(0o755)
    done = subprocess.run(
        ["sh", str(kit / "run_trtexec.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "TRTEXEC": str(fake)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results = collect_results(kit / "results")
    assert [(r["model"], r["precision"]) for r in results] == [
        ("ancestor", "fp16"),
        ("ancestor", "fp32"),
        ("squishednet-1", "fp16"),
        ("squishednet-1", "fp32"),
    ]
    assert {r["backend"] for r in results} == {"trtexec"}


def test_template_is_python36_compatible():
    """vermin finds nothing in the template, or the log module it imports, that Python 3.6 (JetPack 4.6) lacks."""
    pytest.importorskip("vermin")
    run = "import sys, vermin; sys.exit(vermin.main())"  # vermin has no __main__ module
    done = subprocess.run(
        [sys.executable, "-c", run, "-t=3.6-", "--no-tips", "--violations", str(TEMPLATE), str(LOG_MODULE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_template_imports_only_the_standard_library_and_the_log_module_beside_it():
    """Nothing from PyPI: top-level imports are standard library (and trtexec_log.py, which the kit
    copies beside the script and which imports only the standard library); tensorrt is imported inside main()."""
    for path, own in ((TEMPLATE, {"trtexec_log"}), (LOG_MODULE, set())):
        lines = path.read_text().splitlines()
        top = [line.split()[1] for line in lines if line.startswith(("import ", "from "))]
        assert set(top) <= set(sys.stdlib_module_names) | own


def test_the_kit_and_the_package_read_logs_with_one_parser():
    """No copy to keep in step: the script defines no parser of its own, the package's functions
    and the script's come from the same file."""
    import inspect

    from squish_plugin.deploy import trtexec

    assert "def parse_trtexec_summary" not in TEMPLATE.read_text()
    kit = _template()
    assert Path(inspect.getsourcefile(kit.parse_trtexec_output)) == LOG_MODULE
    assert trtexec.log.__file__ == str(LOG_MODULE)


def _same(kit, name: str, *args, **kw):
    """deploy.trtexec's function ``name`` and the kit's return equal values or raise the same sentence."""
    package = {"parse_trtexec_summary": parse_trtexec_summary, "parse_trtexec_output": parse_trtexec_output}[name]
    try:
        expected = package(*args, **kw)
    except InvalidArgumentError as exc:
        with pytest.raises(kit.KitError) as info:
            getattr(kit, name)(*args, **kw)
        assert str(info.value) == str(exc)
    else:
        assert getattr(kit, name)(*args, **kw) == expected


@pytest.mark.parametrize("log", sorted(p.name for p in LOGS.glob("*.log")))
@pytest.mark.parametrize("batch", [1, 32])
def test_template_parser_agrees_with_the_package(log, batch):
    """The kit's script returns what deploy.trtexec returns on every real log, errors included (the
    package only turns the shared parser's KitError into its InvalidArgumentError)."""
    text, kit = (LOGS / log).read_text(), _log_module()
    _same(kit, "parse_trtexec_summary", text)
    _same(kit, "parse_trtexec_output", text, batch=batch)


@pytest.mark.parametrize(
    "text, input_name",
    [(TRT7_LOG, None), (renamed_tx1_log("images"), None), (renamed_tx1_log("images"), "input"), ("", None)],
    ids=["tensorrt7", "images", "images-asked-input", "empty"],
)
def test_template_parser_agrees_on_edge_logs(text, input_name):
    """Same answers on a TensorRT 7.x log, on another input name (found, or asked for and missing), on nothing."""
    kit = _log_module()
    for batch in (1, 32):
        _same(kit, "parse_trtexec_output", text, batch=batch, input_name=input_name)


def test_parse_logs_mode_makes_results_that_collect_accepts(tmp_path):
    """bench_trt.py --parse-logs as a subprocess turns real logs into schema JSON with both images/s figures
    (images_per_second = batch / median latency); collect_results reads them back."""
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(LOGS / "trt82_jetson_tx1.log", results / "ancestor_fp32.trtexec.log")
    shutil.copy(LOGS / "trt82_jetson_tx1.log", results / "squishednet-1_fp16.trtexec.log")
    done = subprocess.run(
        [sys.executable, str(TEMPLATE), "--parse-logs", str(results), "--batch", "1"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    collected = collect_results(results)
    assert [(r["model"], r["backend"], r["precision"]) for r in collected] == [
        ("ancestor", "trtexec", "fp32"),
        ("squishednet-1", "trtexec", "fp16"),
    ]
    first = collected[0]
    assert first["images_per_second"] == first["latency_ips"] == pytest.approx(1 / 90.3035e-3)
    assert first["images_per_second_is"] == "latency_ips" and first["throughput_ips"] == pytest.approx(11.0613)
    assert first["trtexec"]["input_shape"] == [1, 3, 288, 800]


def test_parse_logs_mode_refuses_a_log_without_the_batch(tmp_path):
    """A log whose binding lines are missing (the Xavier excerpt) cannot confirm batch 32: no JSON, an error."""
    shutil.copy(LOGS / "trt84_xavier.log", tmp_path / "ancestor_fp32.trtexec.log")
    done = subprocess.run(
        [sys.executable, str(TEMPLATE), "--parse-logs", str(tmp_path), "--batch", "32"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "batch=32 cannot be confirmed" in done.stderr
    assert not list(tmp_path.glob("*.json"))


def test_parse_logs_mode_reports_a_failed_run(tmp_path):
    """A failed trtexec log makes --parse-logs exit non-zero and print trtexec's error, writing no JSON for it."""
    shutil.copy(LOGS / "trt86_parse_failed.log", tmp_path / "ancestor_fp32.trtexec.log")
    cmd = [sys.executable, str(TEMPLATE), "--parse-logs", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1 and "Engine set up failed" in done.stderr
    assert not list(tmp_path.glob("*.json"))


def test_collect_names_a_bad_file(tmp_path):
    """A result that is not JSON, lacks the schema tag, or lacks a key fails naming that file."""
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="broken.json"):
        collect_results(tmp_path)
    (tmp_path / "broken.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(InvalidArgumentError, match="broken.json.*schema"):
        collect_results(tmp_path)
    good = {
        "schema": "squish-plugin/bench-v1",
        "model": "m",
        "backend": "tensorrt",
        "precision": "fp32",
        "batch": 32,
        "input_size": 224,
        "images_per_second": 10.0,
        "runs": 5,
        "warmup_runs": 1,
        "env": {},
        "latency_ms": {"median": 1.0, "p90": 1.0, "mean": 1.0, "min": 1.0},
    }
    (tmp_path / "broken.json").write_text(json.dumps(good))
    with pytest.raises(InvalidArgumentError, match="broken.json.*latency_ms"):
        collect_results(tmp_path)


def _result(**changes) -> dict:
    base = {
        "schema": "squish-plugin/bench-v1",
        "model": "m",
        "backend": "trtexec",
        "precision": "fp16",
        "batch": 32,
        "input_size": 224,
        "images_per_second": 500.0,
        "runs": 5,
        "warmup_runs": 1,
        "env": {},
        "latency_ms": {"median": 64.0, "p90": 65.0, "mean": 64.0, "min": 63.0, "max": 66.0},
    }
    return {**base, **changes}


def test_collect_accepts_results_of_earlier_kits(tmp_path):
    """A result without latency_ips / throughput_ips / images_per_second_is (an earlier kit's) is still read."""
    (tmp_path / "old.json").write_text(json.dumps(_result()))
    assert collect_results(tmp_path)[0]["images_per_second"] == 500.0


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"latency_ips": 500.0, "throughput_ips": 480.0, "images_per_second_is": "fastest"}, "images_per_second_is"),
        ({"latency_ips": 500.0, "throughput_ips": 480.0, "images_per_second_is": "throughput_ips"}, "not its"),
        ({"latency_ips": 500.0, "throughput_ips": -1.0, "images_per_second_is": "latency_ips"}, "throughput_ips -1"),
        ({"latency_ips": 500.0}, "lacks 'throughput_ips'"),
    ],
    ids=["unknown-definition", "disagrees", "negative", "partial"],
)
def test_collect_checks_the_images_per_second_keys(tmp_path, changes, match):
    """Where the newer keys are present they are checked: a known definition that images_per_second equals,
    positive numbers, all three together."""
    (tmp_path / "new.json").write_text(json.dumps(_result(**changes)))
    with pytest.raises(InvalidArgumentError, match=match):
        collect_results(tmp_path)


def test_collect_empty_or_missing_folder(tmp_path):
    """A folder with no results, or no folder at all, is an error rather than an empty table."""
    with pytest.raises(InvalidArgumentError, match="no \\*.json"):
        collect_results(tmp_path)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        collect_results(tmp_path / "nope")


@pytest.mark.parametrize(
    "models, kw, field",
    [
        ({}, {}, "models"),
        ({"bad name": "x.onnx"}, {}, "model name"),
        ({"m": "missing.onnx"}, {}, "ONNX file"),
    ],
)
def test_make_kit_checks_its_input(tmp_path, models, kw, field):
    """Empty models, unsafe names and missing files are refused with a sentence naming the field."""
    with pytest.raises(InvalidArgumentError, match=field):
        make_kit(models, tmp_path / "kit", **kw)


def test_make_kit_checks_precisions(tmp_path, onnx_file):
    """Only fp32 and fp16 are kit precisions."""
    with pytest.raises(InvalidArgumentError, match="precisions"):
        make_kit({"m": onnx_file}, tmp_path / "kit", precisions=("int8",))
