"""TensorRT Python-API backend: a clear error without TensorRT; a real run where TensorRT and a GPU exist."""

from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch

from _helpers import tiny_onnx
from squish_plugin.deploy.tensorrt_backend import bench_tensorrt
from squish_plugin.errors import InvalidArgumentError, MissingExtraError


def _onnx(tmp_path, batch=4, size=32):
    return tiny_onnx(tmp_path / "tiny.onnx", batch=batch, size=size, head=True)


def test_without_tensorrt_the_error_names_tensorrt(monkeypatch, tmp_path):
    """With tensorrt not importable, bench_tensorrt raises one MissingExtraError sentence naming TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingExtraError, match=r"^the tensorrt backend needs TensorRT's Python module .*\.$"):
        bench_tensorrt(tmp_path / "m.onnx", model="m")


def test_bad_precision_is_refused_before_anything_runs(tmp_path):
    """precision outside fp32/fp16 fails naming the field, with or without TensorRT."""
    with pytest.raises(InvalidArgumentError, match="precision"):
        bench_tensorrt(tmp_path / "m.onnx", model="m", precision="int8")


def test_real_tensorrt_run(tmp_path):
    """Where TensorRT and a CUDA GPU exist: a tiny model gives a bench-v1 result with positive throughput."""
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    r = bench_tensorrt(_onnx(tmp_path), model="tiny", batch=4, size=32, warmup=2, runs=5)
    assert r["schema"] == "squish-plugin/bench-v1" and r["backend"] == "tensorrt"
    assert r["runs"] == 5 and r["images_per_second"] > 0
    assert r["latency_ms"]["min"] <= r["latency_ms"]["median"] <= r["latency_ms"]["max"]


class _FakeTRT:
    """Just enough of the tensorrt module, in its 8.2 (bindings) or 10.x (named tensors) shape."""

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    DataType = type("DataType", (), {"FLOAT": "float", "HALF": "half", "INT32": "int32"})
    BuilderFlag = type("BuilderFlag", (), {"FP16": "fp16"})
    TensorIOMode = type("TensorIOMode", (), {"INPUT": "in", "OUTPUT": "out"})

    def __init__(self, version: str, input_shape=(-1, 3, 32, 32)):
        self.__version__, self.v10 = version, version.startswith("10")
        self.calls: list = []
        self.input_shape = input_shape
        self.NetworkDefinitionCreationFlag = type("F", (), {"EXPLICIT_BATCH": 0})
        if self.v10:
            self.MemoryPoolType = type("M", (), {"WORKSPACE": "workspace"})

    def Builder(self, logger):  # noqa: N802 - mirrors tensorrt.Builder
        trt = self
        tensor = type("T", (), {"name": "input", "shape": trt.input_shape})()
        net = type("Net", (), {"get_input": lambda s, i: tensor})()

        class Config:
            def set_flag(self, flag):
                trt.calls.append(("flag", flag))

            def add_optimization_profile(self, profile):
                trt.calls.append(("profile", profile.shape))

            def __setattr__(self, name, value):
                trt.calls.append((name, value))

        if trt.v10:
            Config.set_memory_pool_limit = lambda s, pool, n: trt.calls.append(("pool", pool, n))

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                self.shape = (name, lo, opt, hi)

        class Builder:
            platform_has_fast_fp16 = True

            def create_network(self, flags):
                trt.calls.append(("network_flags", flags))
                return net

            create_builder_config = staticmethod(Config)
            create_optimization_profile = staticmethod(Profile)

            def build_serialized_network(self, network, config):
                return b"plan"

        return Builder()

    def OnnxParser(self, network, logger):  # noqa: N802
        return type("P", (), {"parse": lambda s, data: True, "num_errors": 0})()

    def Runtime(self, logger):  # noqa: N802
        return type("R", (), {"deserialize_cuda_engine": lambda s, plan: _FakeEngine(self)})()


class _FakeEngine:
    def __init__(self, trt):
        self.trt, self.shapes = trt, {"input": (4, 3, 32, 32), "logits": (4, 10)}
        if trt.v10:
            self.num_io_tensors = 2
        else:
            self.num_bindings = 2

    names = ("input", "logits")
    get_tensor_name = get_binding_name = lambda self, i: self.names[i]
    get_tensor_mode = lambda self, name: "in" if name == "input" else "out"  # noqa: E731
    get_tensor_dtype = lambda self, name: "float"  # noqa: E731
    get_binding_dtype = lambda self, i: "float"  # noqa: E731
    binding_is_input = lambda self, i: i == 0  # noqa: E731
    get_binding_shape = lambda self, i: (-1, 3, 32, 32) if i == 0 else (-1, 10)  # noqa: E731

    def create_execution_context(self):
        trt, shapes = self.trt, self.shapes

        class Context:
            def set_binding_shape(self, i, shape):
                trt.calls.append(("binding_shape", i, shape))

            def set_input_shape(self, name, shape):
                trt.calls.append(("input_shape", name, shape))

            def get_binding_shape(self, i):
                return shapes[_FakeEngine.names[i]]

            def get_tensor_shape(self, name):
                return shapes[name]

            def set_tensor_address(self, name, ptr):
                trt.calls.append(("address", name, ptr))

            def execute_async_v2(self, bindings, stream):
                trt.calls.append(("v2", bindings, stream))
                return True

        if trt.v10:
            Context.execute_async_v3 = lambda s, stream: trt.calls.append(("v3", stream)) or True
            del Context.execute_async_v2
        return Context()


@pytest.mark.parametrize("version", ["8.2.1.8", "10.3.0.30"])
def test_engine_code_follows_each_tensorrt_api(version, tmp_path):
    """Against a stand-in tensorrt module: 8.2 gets EXPLICIT_BATCH, max_workspace_size, binding shapes and
    execute_async_v2; 10.x gets no flag, a workspace memory pool, tensor addresses and execute_async_v3."""
    from squish_plugin.deploy._kit import bench_trt as kit

    trt = _FakeTRT(version)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    engine, name, shape = kit.build_engine(trt, str(onnx), "fp16", 4, 32, 256)
    context = engine.create_execution_context()
    tensors = kit.io_tensors(trt, engine, context, name, shape)
    assert tensors == [("input", True, 4 * 3 * 32 * 32 * 4), ("logits", False, 4 * 10 * 4)]
    assert kit.make_execute(context, tensors, [100, 200])(7)
    assert ("flag", "fp16") in trt.calls and ("profile", ("input", shape, shape, shape)) in trt.calls
    if trt.v10:
        assert ("network_flags", 0) in trt.calls and ("pool", "workspace", 256 << 20) in trt.calls
        assert ("input_shape", "input", shape) in trt.calls and ("address", "logits", 200) in trt.calls
        assert trt.calls[-1] == ("v3", 7)
    else:
        assert ("network_flags", 1) in trt.calls and ("max_workspace_size", 256 << 20) in trt.calls
        assert ("binding_shape", 0, shape) in trt.calls and trt.calls[-1] == ("v2", [100, 200], 7)


def test_engine_code_refuses_a_fixed_batch_other_than_asked(tmp_path):
    """An ONNX fixed at batch 1 is refused for batch 4, naming both shapes."""
    from squish_plugin.deploy._kit import bench_trt as kit

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(kit.KitError, match="1x3x32x32, not 4x3x32x32"):
        kit.build_engine(_FakeTRT("8.2.1", input_shape=(1, 3, 32, 32)), str(onnx), "fp32", 4, 32, 256)


class _FakeCuda:
    """Stand-ins for the torch.cuda calls _time_batches makes, recording which stream each copy,
    event and wait went to; handle 0 is the current (default) stream."""

    def __init__(self, monkeypatch):
        self.calls: list = []
        self.handles = iter(range(1001, 2000))
        self.default = self.active = self._stream(0)
        cuda = self

        class Event:
            def __init__(self, enable_timing=False):
                pass

            def record(self, stream):
                cuda.calls.append(("record", stream.cuda_stream))

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return 5.0

        @contextlib.contextmanager
        def stream_context(stream):
            before, self.active = self.active, stream
            yield
            self.active = before

        monkeypatch.setattr(torch.cuda, "Stream", lambda: self._stream(next(self.handles)))
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "stream", stream_context)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.active)

    def _stream(self, handle: int) -> types.SimpleNamespace:
        def wait_stream(other):
            self.calls.append(("wait", handle, other.cuda_stream))

        return types.SimpleNamespace(cuda_stream=handle, wait_stream=wait_stream)

    def buffer(self) -> types.SimpleNamespace:
        """A tensor stand-in whose copy_ records the stream it was issued on."""
        return types.SimpleNamespace(
            copy_=lambda other, non_blocking=False: self.calls.append(("copy", self.active.cuda_stream))
        )


def test_time_batches_enqueues_on_a_dedicated_stream(monkeypatch):
    """The tensorrt backend's timing loop (no GPU here: torch.cuda faked) hands TensorRT a stream of its own,
    never the current/default one, and puts the copies and both events on that same stream."""
    from squish_plugin.deploy.tensorrt_backend import _time_batches

    cuda = _FakeCuda(monkeypatch)
    handles = []

    def execute(stream_handle):
        handles.append(stream_handle)
        return True

    tensors = [("input", True, 16), ("logits", False, 8)]
    buffers, host = [cuda.buffer(), cuda.buffer()], [cuda.buffer(), cuda.buffer()]
    seconds, wall = _time_batches(execute, tensors, buffers, host, warmup=2, runs=3)
    assert len(handles) == 5 and len(set(handles)) == 1 and handles[0] != cuda.default.cuda_stream
    ours = handles[0]
    assert ("wait", ours, cuda.default.cuda_stream) in cuda.calls  # after the work that made the buffers
    assert {c[-1] for c in cuda.calls if c[0] in ("record", "copy")} == {ours}
    assert seconds == [0.005] * 3 and wall >= 0
