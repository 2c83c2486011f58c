#!/usr/bin/env python3
"""Throughput of ONNX classifiers with TensorRT on a Jetson (squish-plugin kit).

Written for the device's own Python 3.6 and TensorRT 8.2 (JetPack 4.6) and also
runs under TensorRT 10: it needs nothing from PyPI -- the standard library and
the ``tensorrt`` module JetPack installs; CUDA is reached through ctypes on
libcudart.so.

    python3 bench_trt.py models/*.onnx                 # fp32 and fp16, batch/size from manifest.json
    python3 bench_trt.py models/ancestor.onnx --precision fp16 --runs 100
    python3 bench_trt.py --parse-logs results/         # trtexec logs -> JSON results

Each run writes ``results/<model>_<precision>.json`` in the squish-plugin/bench-v1
schema. Latency per batch is timed with CUDA events around H2D copy + inference +
D2H copy, the span trtexec calls "Latency". Every result has both images/s figures:
``latency_ips`` = batch / median latency, which ``images_per_second`` is, and
``throughput_ips`` = images / wall time (trtexec: qps x the batch its log confirms;
here: batch x runs / the wall time of the timed runs).
"""

import argparse
import array
import ctypes
import glob
import json
import os
import platform
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # trtexec_log.py lies beside this script (the kit copies both)

from trtexec_log import (  # noqa: E402  (after the path it is found on)
    IMAGES_PER_SECOND_IS,
    SCHEMA,
    KitError,
    latency_ips,
    parse_trtexec_output,
)


# --- results ------------------------------------------------------------------
def _env(device, tensorrt_version):
    env = {"device": device, "tensorrt": tensorrt_version, "python": platform.python_version(), "host": platform.node()}
    try:
        with open("/proc/device-tree/model") as fh:  # "NVIDIA Jetson TX1 Developer Kit" on the board
            env["board"] = fh.read().strip("\x00\n ")
    except (IOError, OSError):
        pass
    return env


def write_json(path, data):
    """Write atomically: a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def latency_summary(ms):
    ms = sorted(ms)
    n = len(ms)
    median = ms[n // 2] if n % 2 else (ms[n // 2 - 1] + ms[n // 2]) / 2.0
    return {"median": median, "p90": percentile(ms, 90), "mean": sum(ms) / n, "min": ms[0], "max": ms[-1]}


def result(model, backend, precision, batch, size, lat, runs, warmup, env, throughput_ips, **extra):
    """A bench-v1 result, as squish_plugin.deploy.schema.bench_result builds it."""
    ips = latency_ips(batch, lat["median"])
    out = {
        "schema": SCHEMA,
        "model": model,
        "backend": backend,
        "precision": precision,
        "batch": batch,
        "input_size": size,
        "images_per_second": ips,
        "images_per_second_is": IMAGES_PER_SECOND_IS,
        "latency_ips": ips,
        "throughput_ips": throughput_ips,
        "latency_ms": lat,
        "runs": runs,
        "warmup_runs": warmup,
        "env": env,
    }
    out.update(extra)
    return out


def parse_logs(folder, batch, size):
    """Every ``<model>_<precision>.trtexec.log`` in ``folder`` -> ``<model>_<precision>.trtexec.json``."""
    failures = 0
    logs = sorted(glob.glob(os.path.join(folder, "*.trtexec.log")))
    if not logs:
        print("no *.trtexec.log files in %s" % folder, file=sys.stderr)
        return 1
    for log in logs:
        stem = os.path.basename(log)[: -len(".trtexec.log")]
        model, _, precision = stem.rpartition("_")
        with open(log) as fh:
            text = fh.read()
        try:
            parsed = parse_trtexec_output(text, batch)
        except KitError as exc:
            failures += 1
            print("%s: %s" % (log, exc), file=sys.stderr)
            continue
        trtexec = {
            "qps": parsed["qps"],
            "latency_percentiles_ms": parsed["latency_percentiles_ms"],
            "gpu_compute_ms": parsed["gpu_compute_ms"],
            "input_shape": parsed["input_shape"],
            "log": os.path.basename(log),
        }
        env = _env(parsed["device"], parsed["tensorrt"])
        out = os.path.join(folder, stem + ".trtexec.json")
        write_json(
            out,
            result(
                model,
                "trtexec",
                precision,
                batch,
                size,
                parsed["latency_ms"],
                parsed["runs"],
                parsed["warmup_runs"],
                env,
                parsed["throughput_ips"],
                trtexec=trtexec,
            ),
        )
        print(
            "%s: %.1f images/s = batch %d / median %.2f ms (trtexec throughput: %.1f images/s)"
            % (out, parsed["images_per_second"], batch, parsed["latency_ms"]["median"], parsed["throughput_ips"])
        )
    return 1 if failures else 0


# --- TensorRT engine (shared with squish_plugin.deploy.tensorrt_backend) ------
_DTYPE_BYTES = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "UINT8": 1, "BOOL": 1, "INT32": 4, "INT64": 8, "FP8": 1}


def dtype_bytes(trt, dtype):
    for name, nbytes in _DTYPE_BYTES.items():
        if getattr(trt.DataType, name, None) == dtype:
            return nbytes
    raise KitError("TensorRT data type %s has no known size." % dtype)


def build_engine(trt, onnx_path, precision, batch, size, workspace_mb, logger=None):
    """Parse ``onnx_path`` and build an engine for input ``batch`` x 3 x ``size`` x ``size``.

    Explicit batch is a creation flag on TensorRT 8.x and the only mode (flag
    deprecated) on 10.x; a dynamic input axis gets a one-shape optimization profile.
    """
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if creation is not None and hasattr(creation, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(creation.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        if not parser.parse(fh.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise KitError("TensorRT could not parse %s: %s." % (onnx_path, "; ".join(errors) or "no reason given"))
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:
        config.max_workspace_size = workspace_mb << 20
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            raise KitError("this GPU has no fast fp16, so an fp16 engine would measure nothing useful.")
        config.set_flag(trt.BuilderFlag.FP16)
    shape = (batch, 3, size, size)
    inp = network.get_input(0)
    dims = tuple(inp.shape)
    if any(d < 0 for d in dims):
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    elif dims != shape:
        raise KitError(
            "%s has the fixed input shape %s, not %s; export it for batch %d and size %d."
            % (onnx_path, "x".join(map(str, dims)), "x".join(map(str, shape)), batch, size)
        )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise KitError("TensorRT could not build an engine for %s (see its log above)." % onnx_path)
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    return engine, inp.name, shape


def io_tensors(trt, engine, context, input_name, shape):
    """``[(name, is_input, nbytes)]`` in binding order, with the input shape set on ``context``."""
    out = []
    if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5 (the only API on 10.x)
        context.set_input_shape(input_name, shape)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dims = context.get_tensor_shape(name)
            out.append((name, is_input, _volume(dims) * dtype_bytes(trt, engine.get_tensor_dtype(name))))
        return out
    for i in range(engine.num_bindings):  # TensorRT 8.2
        name, is_input = engine.get_binding_name(i), engine.binding_is_input(i)
        if is_input and any(d < 0 for d in engine.get_binding_shape(i)):
            context.set_binding_shape(i, shape)
        dims = context.get_binding_shape(i)
        out.append((name, is_input, _volume(dims) * dtype_bytes(trt, engine.get_binding_dtype(i))))
    return out


def _volume(dims):
    n = 1
    for d in dims:
        n *= int(d)
    return n


def make_execute(context, tensors, addresses):
    """A function ``execute(stream_handle)`` that enqueues one inference."""
    if hasattr(context, "execute_async_v3"):
        for (name, _, _), ptr in zip(tensors, addresses):
            context.set_tensor_address(name, int(ptr))
        return lambda stream: context.execute_async_v3(stream)
    bindings = [int(p) for p in addresses]
    return lambda stream: context.execute_async_v2(bindings, stream)


# --- CUDA through ctypes --------------------------------------------------------
class Cuda(object):
    """The few CUDA runtime calls the benchmark needs, from libcudart.so."""

    H2D, D2H = 1, 2

    def __init__(self):
        names = ["libcudart.so"] + sorted(glob.glob("/usr/local/cuda/lib64/libcudart.so*"), reverse=True)
        self.lib = None
        for name in names:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self.lib is None:
            raise KitError("libcudart.so was not found; is CUDA installed (JetPack puts it in /usr/local/cuda/lib64)?")
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaMemcpyAsync.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]

    def check(self, status, what):
        if status != 0:
            raise KitError("CUDA %s failed: %s." % (what, self.lib.cudaGetErrorString(status).decode()))

    def malloc(self, nbytes):
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        return ptr.value

    def free(self, ptr):
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def handle(self, create, what):
        h = ctypes.c_void_p()
        self.check(getattr(self.lib, create)(ctypes.byref(h)), what)
        return h.value

    def copy(self, dst, src, nbytes, kind, stream):
        self.check(self.lib.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def elapsed_ms(self, start, end):
        ms = ctypes.c_float()
        self.check(self.lib.cudaEventSynchronize(ctypes.c_void_p(end)), "cudaEventSynchronize")
        self.check(
            self.lib.cudaEventElapsedTime(ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end)),
            "cudaEventElapsedTime",
        )
        return ms.value

    def device_name(self):
        props = ctypes.create_string_buffer(8192)  # cudaDeviceProp starts with char name[256]; 8 KiB covers it all
        if self.lib.cudaGetDeviceProperties(props, 0) != 0:
            return None
        return props.raw[:256].split(b"\x00", 1)[0].decode(errors="replace") or None


def _host_buffer(nbytes, seed=0):
    """Random float32 bytes in host memory (a 4 KiB random block, tiled: fast without numpy)."""
    rng = random.Random(seed)
    block = array.array("f", [rng.uniform(-1.0, 1.0) for _ in range(1024)])
    return block * (nbytes // (4 * len(block)) + 1)


def bench_one(trt, cuda, onnx_path, model, precision, batch, size, warmup, runs, workspace_mb):
    """Build, then time ``warmup`` + ``runs`` batches; a bench-v1 result (backend "tensorrt")."""
    engine, input_name, shape = build_engine(trt, onnx_path, precision, batch, size, workspace_mb)
    context = engine.create_execution_context()
    tensors = io_tensors(trt, engine, context, input_name, shape)
    device = [cuda.malloc(nbytes) for _, _, nbytes in tensors]
    host = [_host_buffer(nbytes) for _, _, nbytes in tensors]
    stream = cuda.handle("cudaStreamCreate", "cudaStreamCreate")
    start, end = cuda.handle("cudaEventCreate", "cudaEventCreate"), cuda.handle("cudaEventCreate", "cudaEventCreate")
    execute = make_execute(context, tensors, device)
    times, began = [], None
    try:
        for i in range(warmup + runs):
            if i == warmup:
                began = time.perf_counter()  # the wall time of the timed runs, host syncs included
            cuda.check(cuda.lib.cudaEventRecord(ctypes.c_void_p(start), ctypes.c_void_p(stream)), "cudaEventRecord")
            for (_, is_input, nbytes), dev, buf in zip(tensors, device, host):
                if is_input:
                    cuda.copy(dev, buf.buffer_info()[0], nbytes, Cuda.H2D, stream)
            if not execute(stream):
                raise KitError("TensorRT failed to enqueue an inference of %s." % onnx_path)
            for (_, is_input, nbytes), dev, buf in zip(tensors, device, host):
                if not is_input:
                    cuda.copy(buf.buffer_info()[0], dev, nbytes, Cuda.D2H, stream)
            cuda.check(cuda.lib.cudaEventRecord(ctypes.c_void_p(end), ctypes.c_void_p(stream)), "cudaEventRecord")
            ms = cuda.elapsed_ms(start, end)
            if i >= warmup:
                times.append(ms)
        wall = time.perf_counter() - began
    finally:
        for ptr in device:
            cuda.free(ptr)
        for event in (start, end):
            cuda.lib.cudaEventDestroy(ctypes.c_void_p(event))
        cuda.lib.cudaStreamDestroy(ctypes.c_void_p(stream))
    env = dict(
        _env(cuda.device_name(), trt.__version__),
        timing="cuda events: H2D + inference + D2H",
        workspace_mb=workspace_mb,
    )
    lat = latency_summary(times)
    return result(model, "tensorrt", precision, batch, size, lat, runs, warmup, env, batch * runs / wall)


# --- command line ---------------------------------------------------------------
def _manifest():
    path = os.path.join(HERE, "manifest.json")
    if os.path.isfile(path):
        with open(path) as fh:
            return json.load(fh)
    return {}


def main(argv=None):
    manifest = _manifest()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", nargs="*", help="ONNX files; the model name is the file name without .onnx")
    ap.add_argument(
        "--precision", nargs="+", choices=("fp32", "fp16"), default=manifest.get("precisions", ["fp32", "fp16"])
    )
    ap.add_argument("--batch", type=int, default=manifest.get("batch", 32))
    ap.add_argument("--size", type=int, default=manifest.get("input_size", 224))
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--workspace-mb", type=int, default=1024)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--parse-logs", metavar="DIR", help="turn DIR/<model>_<precision>.trtexec.log into JSON and stop")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.size < 1 or args.runs < 1 or args.warmup < 0:
        ap.error("--batch, --size and --runs must be >= 1 and --warmup >= 0")
    if args.parse_logs:
        return parse_logs(args.parse_logs, args.batch, args.size)
    if not args.onnx:
        ap.error("name at least one ONNX file, or use --parse-logs DIR")
    try:
        import tensorrt as trt
    except ImportError:
        print(
            "the tensorrt Python module is missing; on a Jetson it comes with JetPack (python3-libnvinfer).",
            file=sys.stderr,
        )
        return 2
    cuda = Cuda()
    if not os.path.isdir(args.out):
        os.makedirs(args.out)
    failures = 0
    for path in args.onnx:
        model = os.path.basename(path)[: -len(".onnx")] if path.endswith(".onnx") else os.path.basename(path)
        for precision in args.precision:
            try:
                res = bench_one(
                    trt, cuda, path, model, precision, args.batch, args.size, args.warmup, args.runs, args.workspace_mb
                )
            except KitError as exc:
                failures += 1
                print("%s %s: %s" % (model, precision, exc), file=sys.stderr)
                continue
            out = os.path.join(args.out, "%s_%s.json" % (model, precision))
            write_json(out, res)
            print(
                "%s: %.1f images/s = batch %d / median %.2f ms (wall-time throughput: %.1f images/s)"
                % (out, res["images_per_second"], args.batch, res["latency_ms"]["median"], res["throughput_ips"])
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
