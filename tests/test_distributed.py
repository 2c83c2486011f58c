"""torchrun / DistributedDataParallel: one study on several processes (issue #7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from _helpers import QUICK, set_args
from squish_plugin.errors import InvalidArgumentError
from squish_plugin.study import distributed
from squish_plugin.study.data import LoadedSplit, iterate_batches

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_torchrun_worker.py")


def _split(n: int = 37, size: int = 16) -> LoadedSplit:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return LoadedSplit(images, torch.arange(n) % 10, tuple(str(i) for i in range(10)))


@pytest.mark.parametrize("crop", [None, 12])
def test_shards_together_are_the_single_process_batch(crop):
    """With the same seed on every rank, the ranks' parts of each batch are exactly the
    batch one process would train on (same images, same augmentation), the order padded
    to a multiple of the world size like DistributedSampler."""
    split, world, bs = _split(), 2, 8

    def batches(shard):
        g = torch.Generator().manual_seed(5)
        return list(iterate_batches(split, bs, train=True, generator=g, crop=crop, shard=shard))

    single = batches(None)
    parts = [batches((r, world)) for r in range(world)]
    assert len(parts[0]) == len(parts[1]) == len(single)
    for i, (x, y) in enumerate(single):
        x0, y0 = parts[0][i]
        x1, y1 = parts[1][i]
        assert len(y0) == len(y1)  # equal shares: DDP averages gradients over equal parts
        if i < len(single) - 1:  # the last batch is padded (37 images -> 38)
            torch.testing.assert_close(torch.stack([x0, x1], 1).flatten(0, 1), x, rtol=0, atol=0)
            assert torch.equal(torch.stack([y0, y1], 1).flatten(), y)
    seen = torch.cat([y for part in parts for _, y in part])
    assert len(seen) == 38


def test_eval_shards_cover_the_split_once():
    split = _split(23)
    idx = [torch.cat([y for _, y in iterate_batches(split, 4, train=False, shard=(r, 3))]) for r in range(3)]
    assert sorted(torch.cat(idx).tolist()) == sorted(split.labels.tolist())


def test_bad_shard_and_batch_size():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(InvalidArgumentError, match="not a multiple of the 3 processes"):
        next(iterate_batches(_split(), 8, train=True, generator=g, shard=(0, 3)))
    with pytest.raises(InvalidArgumentError, match="shard must be"):
        next(iterate_batches(_split(), 8, train=True, generator=g, shard=(2, 2)))


def test_single_process_is_a_no_op():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.check_replicas(nn.Linear(2, 2), "x") is None
    assert distributed.broadcast_object("a") == "a"
    assert distributed.device_for("cpu") == torch.device("cpu")
    with pytest.raises(InvalidArgumentError, match="'auto', 'cpu' or 'cuda'"):
        distributed.device_for("tpu")


def _mismatch_worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = nn.Linear(3, 2)
        nn.init.constant_(model.weight, 0.5)
        nn.init.zeros_(model.bias)
        same = distributed.check_replicas(model, "the ancestor")
        if rank == 1:
            with torch.no_grad():
                model.weight[0, 0] += 1e-6
        try:
            distributed.check_replicas(model, "offspring 0 of generation 3")
            message = "no error"
        except distributed.ReplicaMismatchError as exc:
            message = str(exc)
        Path(f"{out}.{rank}").write_text(json.dumps({"same": same, "message": message}))
    finally:
        dist.destroy_process_group()


def test_replica_check_catches_one_changed_weight(tmp_path):
    """Two gloo processes: equal networks pass; one weight changed by 1e-6 on rank 1 is
    caught on both ranks with a sentence naming the network and the rank."""
    mp.spawn(_mismatch_worker, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"out.{rank}").read_text())
        assert got["same"]["ranks"] == 2 and len(got["same"]["fingerprint"]) == 64
        assert "offspring 0 of generation 3 differs between rank 0 and rank 1" in got["message"]


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        SQUISH_CACHE=str(tmp_path / "cache"),
        SQUISH_AUDIT_DIR=str(tmp_path / "runs"),
        SQUISH_AUDIT_LOG=str(tmp_path / "audit"),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_torchrun_two_gloo_processes_agree_and_rank0_alone_writes(tmp_path):
    """`torchrun --nproc_per_node 2` on the quickstart images, 2 generations: every
    network (ancestor and offspring) has the same architecture and weights on both ranks
    before and after training, rank 0 alone writes the run directory, and a resume under
    torchrun replays the lost generation exactly."""
    (tmp_path / "runs").mkdir()
    done = _torchrun(
        tmp_path,
        "run",
        "examples/quickstart.yaml",
        *set_args({**QUICK, "train.threads": 1, "train.device": "cpu", "output.dir": tmp_path / "runs"}),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "(2 processes)" in done.stdout
    records = json.loads((run_dir / "lineage.json").read_text())["records"]
    assert [r["generation"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["replicas"]["ranks"] == 2
        assert len(r["replicas"]["before_training"]) == len(r["replicas"]["after_training"]) == 64
    assert len({r["params"] for r in records}) == 3  # the offspring really shrank
    assert (run_dir / "report.md").is_file() and (run_dir / "checkpoints" / "gen_02.pt").is_file()
    rank0 = (tmp_path / "audit.0").read_text().splitlines()
    assert any("lineage.json" in line for line in rank0) and any("gen_02.pt" in line for line in rank0)
    assert (tmp_path / "audit.1").read_text() == ""  # rank 1 wrote nothing under the run folder

    # a run killed after generation 1, resumed under torchrun, redoes generation 2 identically
    lineage = json.loads((run_dir / "lineage.json").read_text())
    lineage["records"] = lineage["records"][:2]
    (run_dir / "lineage.json").write_text(json.dumps(lineage))
    (run_dir / "checkpoints" / "gen_02.pt").unlink()
    again = _torchrun(tmp_path, "run", "--resume", str(run_dir))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = json.loads((run_dir / "lineage.json").read_text())["records"]
    assert resumed[2]["replicas"] == records[2]["replicas"] and resumed[2]["top1"] == records[2]["top1"]
    assert (tmp_path / "audit.1").read_text() == ""


def test_cuda_training_uses_deterministic_cudnn_and_restores_flags():
    """On CUDA, training selects deterministic cuDNN (same seed, same weights: measured on
    an H200, two quickstart runs identical) and restores the caller's flags afterwards."""
    from squish_plugin.study.training import _CudnnDeterminism

    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        guard = _CudnnDeterminism(True)
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)
        guard.restore()
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
        _CudnnDeterminism(False).restore()
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_a_gpu_is_one_sentence(tmp_path):
    """`train.device: cuda` on a machine without CUDA stops before anything is decoded or
    written, in one sentence, exit 2."""
    from typer.testing import CliRunner

    from squish_plugin.cli import app

    with pytest.raises(InvalidArgumentError, match="PyTorch sees no CUDA GPU"):
        distributed.device_for("cuda")
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(REPO / "examples" / "quickstart.yaml"),
            "--set",
            "train.device=cuda",
            "--set",
            f"output.dir={tmp_path / 'runs'}",
        ],
    )
    assert result.exit_code == 2 and "PyTorch sees no CUDA GPU" in result.output
    assert not (tmp_path / "runs").exists()
