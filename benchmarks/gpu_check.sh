#!/bin/bash
# GPU checks of issue #7, as run on an NVIDIA H200 (torch 2.11) on 2026-11-26: the CUDA
# training path (train.device auto), determinism of two CUDA runs, torchrun with gloo,
# the one-GPU/two-process sentence, and the tests with a GPU visible.
# Run from the repository root on a CUDA machine with squish-plugin installed ("pip install -e .[dev]").
set -u
export PYTHONUNBUFFERED=1 SQUISH_CACHE=${SQUISH_CACHE:-/tmp/squish-cache}
out=${OUT:-/tmp/gpu-check}
for i in 1 2; do
  s=$SECONDS
  python3 -m squish_plugin run examples/quickstart.yaml --set output.dir=$out/cuda$i 2>&1 | grep -E "^gen |error"
  echo "quickstart on CUDA, run $i: $((SECONDS - s)) s"
done
python3 - "$out" <<'PY'
import glob, json, sys
a, b = (json.load(open(glob.glob(f"{sys.argv[1]}/cuda{i}/*/lineage.json")[0]))["records"] for i in (1, 2))
key = lambda rs: [(r["params"], r["widths"], r["top1"]) for r in rs]
print("two CUDA runs identical:", key(a) == key(b))
PY
s=$SECONDS
python3 -m squish_plugin run examples/quickstart.yaml --set output.dir=$out/cpu --set train.device=cpu 2>&1 | grep -E "^gen |error"
echo "quickstart on the CPU: $((SECONDS - s)) s"
echo "two processes, one GPU (expect one sentence, exit 2):"
timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m squish_plugin run examples/quickstart.yaml \
  --set output.dir=$out/x 2>&1 | grep -E "^error" | head -2
echo "torchrun, 2 processes, gloo:"
timeout 200 python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m squish_plugin run examples/quickstart.yaml \
  --set output.dir=$out/ddp --set train.device=cpu --set train.threads=4 2>&1 | grep -E "^gen |error"
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_engine.py tests/test_study.py \
  tests/test_distributed.py tests/test_recipe_cli.py tests/test_pruner.py 2>&1 | tail -3
