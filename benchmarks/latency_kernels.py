"""Issue #28 B probe: price a network by the kernels ONNX Runtime actually runs.

The shipped table times each prunable layer alone (a Conv+Relu graph) and fits one line, with
one factor for layers off the lattice, through the layer sums. ONNX Runtime does not run the
layers a network is made of: its graph optimiser turns aligned convolutions into blocked-layout
(NCHWc) kernels, leaves misaligned ones in NCHW (``FusedConv``), and inserts ``ReorderInput`` /
``ReorderOutput`` kernels wherever the two layouts meet (nn-Meter's "kernel detection" step, done
by the backend itself). This probe reads each network's *optimised* graph (the session's
``optimized_model_filepath``), cuts every node of it out as a one-node graph, times every distinct
kernel alone (three passes, each kernel's fastest), and predicts a network as the sum of its
kernels' times, raw and through a line fitted on the table's calibration networks. It also
records each node's time inside the running network (ONNX Runtime's profiler), to say where the
sum misses. The kernels timed are those of the networks predicted (an oracle for the kernel
set, not a model that generalises): it says whether kernel sums can carry the goals at all, which
a grid or a regressor over kernel signatures would then have to approach.

    python benchmarks/latency_kernels.py            # -> benchmarks/results/latency/kernels.json (~11 min, idle box)
    python benchmarks/latency_kernels.py --analyse  # evaluate the committed timings again, time nothing

Run it on an idle machine: nothing else heavy beside it.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_model as lm  # noqa: E402
from squish_plugin import squeezenet1_1_ancestor  # noqa: E402
from squish_plugin.deploy.backends import SPIN_STOP, MachineLoad, cpu_name  # noqa: E402
from squish_plugin.deploy.export import export_onnx  # noqa: E402
from squish_plugin.deploy.latency import calibration_networks, time_networks  # noqa: E402
from squish_plugin.deploy.latency.timers import _median_ms  # noqa: E402

OUT = lm.RESULTS / "latency" / "kernels.json"
PASSES, RUNS = 3, 5


def _options(optimise: bool, profile: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    opts.log_severity_level = 3
    opts.add_session_config_entry(SPIN_STOP, "1")
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile:
        opts.enable_profiling, opts.profile_file_prefix = True, profile
    return opts


def optimised_graph(model: torch.nn.Module, tmp: Path, name: str) -> Path:
    """The graph ONNX Runtime's CPU provider runs for ``model`` (batch 32, 224 px), as a file."""
    import onnxruntime as ort

    raw, opt = tmp / f"{name}.onnx", tmp / f"{name}.opt.onnx"
    export_onnx(model.eval(), raw, batch=32, size=224)
    opts = _options(True)
    opts.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    return opt


def node_profile(opt: Path, tmp: Path) -> dict[str, dict]:
    """Each node's input/output shapes and its fastest time inside the running network (ms)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(opt), _options(False, str(tmp / "prof")), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ones((32, 3, 224, 224), np.float32)}
    for _ in range(4):
        session.run(None, feed)
    nodes: dict[str, dict] = {}
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name, args = event["name"][: -len("_kernel_time")], event["args"]
        shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
        row = nodes.setdefault(name, {"inputs": shapes, "in_network_ms": []})
        row["in_network_ms"].append(event["dur"] / 1e3)
    for row in nodes.values():
        row["in_network_ms"] = min(row["in_network_ms"][1:] or row["in_network_ms"])  # the first run warms up
    return nodes


def kernels(opt: Path, profile: dict[str, dict]) -> list[tuple[str, str, str, bytes, list]]:
    """``(node, kind, signature, one-node model, input shapes)`` for every node of the graph."""
    import onnx
    from onnx import helper

    model = onnx.load(str(opt))
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        shapes = profile[node.name]["inputs"]
        inputs, used, feeds = [], [], []
        for name, shape in zip(node.input, shapes):
            if name in inits:
                used.append(inits[name])
            elif name:
                inputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
                feeds.append(shape)
        outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node.output if o]
        graph = helper.make_graph([node], "kernel", inputs, outputs, initializer=used)
        one = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        attrs = sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute)
        weights = [list(i.dims) for i in used]
        kind = f"{node.domain.split('.')[-1] or 'onnx'}:{node.op_type}"
        signature = json.dumps([kind, attrs, shapes, weights])
        out.append((node.name, kind, signature, one.SerializeToString(), feeds))
    return out


def time_kernels(models: dict[str, tuple[bytes, list]]) -> dict[str, float]:
    """Each one-node model's fastest median of ``RUNS`` runs over ``PASSES`` passes (ms); a
    session per kernel and pass (kept open, each one's arena would hold its output)."""
    best: dict[str, float] = {}
    for _ in range(PASSES):
        for sig in sorted(models):
            best[sig] = min(best.get(sig, float("inf")), _time_one(*models[sig]))
    return best


def _time_one(one: bytes, shapes: list) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(one, _options(False), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones(s, np.float32) for i, s in zip(session.get_inputs(), shapes)}
    return _median_ms(lambda: session.run(None, feed), 1, RUNS)


def sitting(out: Path) -> None:
    torch.set_num_threads(2)
    started = time.perf_counter()
    ancestor = squeezenet1_1_ancestor(10, weights=None).eval()
    inputs = torch.zeros(1, 3, 224, 224)
    nets = {n: (k, p, m) for n, (k, p, m) in lm.networks(ancestor, 0, 12, 16).items()}
    calibration = calibration_networks(ancestor, 16, inputs)
    for n, m in calibration.items():
        nets.setdefault(f"cal-{n}", ("calibration", "", m))
    graphs: dict[str, list] = {}
    to_time: dict[str, tuple[bytes, list]] = {}
    with tempfile.TemporaryDirectory() as tmp, MachineLoad() as load:
        for i, (name, (_, _, model)) in enumerate(sorted(nets.items())):
            opt = optimised_graph(model, Path(tmp), f"n{i}")
            profile = node_profile(opt, Path(tmp))
            rows = []
            for node, kind, sig, one, feeds in kernels(opt, profile):
                to_time.setdefault(sig, (one, feeds))
                rows.append([node, kind, sig, profile[node]["in_network_ms"]])
            graphs[name] = rows
        prepared = time.perf_counter() - started
        kernel_ms = time_kernels(to_time)
        kernels_s = time.perf_counter() - started - prepared
        measured = time_networks({n: m for n, (_, _, m) in nets.items()}, "onnxruntime", batch=32, threads=2)
    index = {sig: i for i, sig in enumerate(sorted(kernel_ms))}  # each kernel's signature once
    record = {
        "cpu": cpu_name(),
        "load": load.record(),
        "seconds": {"graphs": round(prepared, 1), "kernels": round(kernels_s, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "networks": {n: {"kind": k, "parent": p} for n, (k, p, _) in sorted(nets.items())},
        "measured_ms": measured,
        "kernels": [[sig, round(ms, 5)] for sig, ms in sorted(kernel_ms.items())],
        "graphs": {n: [[node, kind, index[sig], round(ms, 5)] for node, kind, sig, ms in rows]
                   for n, rows in graphs.items()},
    }  # fmt: skip
    out.write_text(json.dumps(record, indent=0) + "\n")


def _line(raw: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(scale, offset)`` of the line through the kernel sums, fitted on relative errors."""
    import latency_probes as lp

    return lp._fit(np.stack([raw, np.ones_like(raw)], axis=1), y, relative=True)


def analyse(path: Path) -> dict:
    rec = json.loads(path.read_text())
    kernel_ms, measured, nets = [ms for _, ms in rec["kernels"]], rec["measured_ms"], rec["networks"]
    raw = {n: sum(kernel_ms[sig] for _, _, sig, _ in rows) for n, rows in rec["graphs"].items()}
    in_net = {n: sum(ms for *_, ms in rows) for n, rows in rec["graphs"].items()}
    cal = sorted(n for n in nets if nets[n]["kind"] == "calibration")
    test = sorted(n for n in nets if nets[n]["kind"] != "calibration")
    coef = _line(np.array([raw[n] for n in cal]), np.array([measured[n] for n in cal]))
    loo = []
    for left in cal:
        rest = [n for n in cal if n != left]
        c = _line(np.array([raw[n] for n in rest]), np.array([measured[n] for n in rest]))
        loo.append((c[0] * raw[left] + c[1]) / measured[left] - 1)
    result = {"line": {"scale": round(float(coef[0]), 4), "offset_ms": round(float(coef[1]), 3)},
              "loo_rmspe": round(float(np.sqrt(np.mean(np.square(loo)))), 4)}  # fmt: skip
    for label, pred in (
        ("raw sum", raw),
        ("fitted line", {n: coef[0] * raw[n] + coef[1] for n in raw}),
        ("profiler's in-network node sum", in_net),
    ):
        rows = [{"network": n, "kind": nets[n]["kind"], "parent": nets[n]["parent"], "measured_ms": measured[n],
                 "predicted_ms": pred[n]} for n in test]  # fmt: skip
        s = lm.summary(rows)
        result[label] = {k: s[k] for k in ("networks", "within_10pct", "within_5pct", "rmspe", "spearman",
                                           "ratios_within_5pct", "by_kind")}  # fmt: skip
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    for rows in rec["graphs"].values():
        for _, kind, sig, ms in rows:
            by_kind[kind].append(ms / kernel_ms[sig])
    result["in_network_over_alone_by_kernel"] = {
        k: {"n": len(v), "median": round(float(np.median(v)), 3), "p10": round(float(np.percentile(v, 10)), 3),
            "p90": round(float(np.percentile(v, 90)), 3)} for k, v in sorted(by_kind.items())}  # fmt: skip
    result["distinct_kernels"] = len(kernel_ms)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analyse", action="store_true", help="time nothing: evaluate the committed timings")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not args.analyse:
        sitting(args.out)
    result = analyse(args.out)
    args.out.with_name(args.out.stem + "-summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
