"""Deployment of a run directory: export its ancestor and SquishedNets to ONNX,
benchmark them, build the Jetson kit, collect device results into the report.

Layout inside a run directory::

    onnx/<model>.onnx, onnx/manifest.json         # squish-plugin export
    bench/<backend>-<precision>-b<batch>.json     # squish-plugin bench / bench collect
    throughput.json                               # the report's Images/s column

The column's label says which images/s it shows (``deploy.schema``: batch / median
latency for results of this version, whatever the backend).

Example:
    >>> from squish_plugin.study.deployment import export_run, bench_run  # doctest: +SKIP
    >>> export_run("runs/quickstart-20261125-183847"); bench_run("runs/quickstart-20261125-183847")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..deploy.backends import BACKENDS, MachineLoad, bench_interleaved
from ..deploy.schema import IPS_DEFINITIONS, images_per_second_is
from ..errors import InvalidArgumentError
from ..persistence import load_pruned, write_json_atomic
from .engine import read_lineage
from .runner import THROUGHPUT_FILE, rewrite_report, squishednet_models

__all__ = ["bench_run", "collect_into_run", "export_run", "kit_for_run"]

MANIFEST = "onnx/manifest.json"


def export_run(run_dir: str | Path, *, opset: int = 13, batch: int | None = None, size: int = 224) -> dict:
    """Export the ancestor and every named SquishedNet of ``run_dir`` to ONNX, for
    ``size`` x ``size`` inputs (224, the paper's, by default). All or nothing: every checkpoint
    is read before anything is written, the files go to a staging folder, and ``onnx/`` is
    replaced whole only when all of them are there."""
    from ..deploy.export import export_onnx

    run_dir = Path(run_dir)
    records = {r["generation"]: r for r in read_lineage(run_dir)}
    models = {
        name: (gen, load_pruned(run_dir / records[gen]["checkpoint"]))
        for name, gen in squishednet_models(run_dir).items()
    }
    manifest: dict[str, Any] = {"size": size, "opset": opset, "batch": batch, "models": {}}
    stage = run_dir / f".onnx-{os.getpid()}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for name, (gen, model) in models.items():
            info = export_onnx(model, stage / f"{name}.onnx", opset=opset, batch=batch, size=size)
            info.update(
                generation=gen, path=f"onnx/{name}.onnx", params=records[gen]["params"], macs=records[gen].get("macs")
            )
            manifest["models"][name] = info
        write_json_atomic(stage / Path(MANIFEST).name, manifest)
        _replace_dir(stage, run_dir / Path(MANIFEST).parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _replace_dir(new: Path, target: Path) -> None:
    """``target`` becomes ``new``: two renames, the old folder removed only after."""
    old = target.with_name(f".{target.name}-old-{os.getpid()}.tmp")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise InvalidArgumentError(f"'{run_dir}' has no {MANIFEST}: run `squish-plugin export {run_dir}` first.")
    return json.loads(path.read_text())


def _store(run_dir: Path, results: list[dict], generations: dict[str, int]) -> Path:
    """Write the results beside the run and make them the report's speed column, labelled
    with the images/s definition its values follow."""
    first = results[0]
    kinds = sorted({images_per_second_is(r) for r in results})
    if len(kinds) > 1:
        raise InvalidArgumentError(
            f"the {first['backend']} {first['precision']} batch-{first['batch']} results mix images/s definitions "
            f"({', '.join(kinds)}); results of earlier kits give trtexec's qps x batch, so parse their logs again "
            "with this version's bench_trt.py --parse-logs."
        )
    path = run_dir / "bench" / f"{first['backend']}-{first['precision']}-b{first['batch']}.json"
    write_json_atomic(path, results)
    device = first.get("env", {}).get("device", "unknown device")
    label = (
        f"{first['backend']} {first['precision']}, batch {first['batch']}, {first['input_size']} px, {device}; "
        f"images/s = {IPS_DEFINITIONS[kinds[0]]}"
    )
    values = {str(generations[r["model"]]): r["images_per_second"] for r in results if r["model"] in generations}
    write_json_atomic(
        run_dir / THROUGHPUT_FILE, {"label": label, "values": values, "source": str(path.relative_to(run_dir))}
    )
    rewrite_report(run_dir)
    return path


def bench_run(
    run_dir: str | Path,
    *,
    backend: str = "onnxruntime",
    batch: int = 32,
    precision: str = "fp32",
    threads: int = 2,
    warmup: int = 3,
    runs: int = 10,
    trtexec: str | None = None,
    rounds: int = 1,
) -> list[dict]:
    """Benchmark every exported model of ``run_dir`` with one backend, in one process;
    ``rounds > 1`` (pytorch, onnxruntime) interleaves the models round by round."""
    _check_bench(backend, precision, rounds)
    run_dir = Path(run_dir)
    manifest = _manifest(run_dir)
    needs, fn = BACKENDS[backend]
    records = {r["generation"]: r for r in read_lineage(run_dir)}
    models = manifest["models"]

    def target(info: dict) -> Any:
        if needs == "model":
            return load_pruned(run_dir / records[info["generation"]]["checkpoint"])
        return run_dir / info["path"]

    common = {"batch": batch, "size": manifest["size"], "threads": threads, "warmup": warmup, "runs": runs}
    with MachineLoad() as load:  # what else ran meanwhile: recorded with every figure
        if rounds > 1:
            targets = {name: target(info) for name, info in models.items()}
            results = bench_interleaved(targets, backend=backend, rounds=rounds, **common)
        else:
            options = {**common, "precision": precision, "trtexec": trtexec}
            results = [fn(target(info), name=name, **options) for name, info in models.items()]
    for res in results:
        info = models[res["model"]]
        res.update(params=info["params"], macs=info["macs"], generation=info["generation"])
        res["env"] = {**res.get("env", {}), "machine_load": load.record()}
    _store(run_dir, results, {n: i["generation"] for n, i in manifest["models"].items()})
    return results


def _check_bench(backend: str, precision: str, rounds: int) -> None:
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}.")
    if precision not in ("fp32", "fp16"):
        raise InvalidArgumentError(f"precision must be fp32 or fp16, got {precision!r}.")
    if precision == "fp16" and backend in ("pytorch", "onnxruntime"):
        raise InvalidArgumentError(f"the {backend} backend measures fp32 only; fp16 is for tensorrt and trtexec.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InvalidArgumentError(f"rounds must be an integer >= 1, got {rounds!r}.")
    if rounds > 1 and backend not in ("pytorch", "onnxruntime"):
        raise InvalidArgumentError(f"rounds > 1 applies to the pytorch and onnxruntime backends, not {backend}.")


def kit_for_run(
    run_dir: str | Path, out: str | Path, *, batch: int = 32, precisions=("fp32", "fp16"), latency: bool = False
) -> Path:
    """The Jetson kit for the run's exported models (see ``deploy.kit``); ``latency``
    adds the measurements of a latency table for the run's ancestor."""
    from ..deploy.kit import make_kit

    run_dir = Path(run_dir)
    manifest = _manifest(run_dir)
    models = {name: run_dir / info["path"] for name, info in manifest["models"].items()}
    extra = None
    if latency:
        from ..deploy.latency.kit import latency_kit

        records = read_lineage(run_dir)
        ancestor = load_pruned(run_dir / records[0]["checkpoint"]).eval()
        extra = latency_kit(ancestor, batch=batch, size=manifest["size"])
    return make_kit(models, Path(out), batch=batch, size=manifest["size"], precisions=tuple(precisions), latency=extra)


def collect_into_run(results_dir: str | Path, run_dir: str | Path) -> list[dict]:
    """Read device results (kit JSON) and fill the run's report speed column; one
    file per backend/precision/batch combination is stored in the run."""
    from ..deploy.kit import collect_results

    run_dir = Path(run_dir)
    manifest = _manifest(run_dir)
    generations = {n: i["generation"] for n, i in manifest["models"].items()}
    results = collect_results(Path(results_dir))
    if not results:
        raise InvalidArgumentError(f"'{results_dir}' holds no result JSON files.")
    groups: dict[tuple, list[dict]] = {}
    for res in results:
        groups.setdefault((res["backend"], res["precision"], res["batch"]), []).append(res)
    # the report shows the last group in sorted order; every group is kept on disk
    for key in sorted(groups):
        _store(run_dir, groups[key], generations)
    return results
