#!/usr/bin/env bash
# Issue #25's protocol on the committed three-seed study, one heavy job at a time; every step
# skips what is done and resumes what was cut short (per epoch), so run it again after a kill.
#   bash benchmarks/finished_protocol.sh            # FINISH="finish.epochs=20 ..." overrides the finishing
# The baseline networks compare keeps for finishing and the finishing states lie under
# benchmarks/results/finished-compare/checkpoints/ (ignored by git): commit the ones still needed
# with `git add -f` before a session ends, or a new checkout has to prune the baseline again.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin/squish-plugin}
read -r -a FINISH <<< "${FINISH:-finish.epochs=20}"
SETS=()
for kv in "${FINISH[@]}" "squishednets.extra_params=[123500]"; do SETS+=(--set "$kv"); done
for seed in 0 1 2; do
  "$BIN" finish "benchmarks/results/imagenette-seeds/seed-$seed" "${SETS[@]}"
done
if [[ "${CONTROLS:-1}" == 1 ]]; then
  "$BIN" compare examples/compare-finished.yaml --resume benchmarks/results/finished-compare
fi
# The latency-aware study's named networks, finished alike (issue #25: its finished networks are
# compared with the parameter-budget study's at equal top-1: benchmarks/speed_at_accuracy.py).
if [[ "${LATENCY:-1}" == 1 ]]; then
  LSETS=()
  for kv in "${FINISH[@]}"; do LSETS+=(--set "$kv"); done
  for seed in 0 1 2; do
    only=()
    if [[ $seed == 2 ]]; then  # seed 2's SquishedNet-3 (generation 3): its checkpoint was never kept
      only=(--set "finish.networks=[SquishedNet-1,SquishedNet-2,SquishedNet-4]")
    fi
    "$BIN" finish "benchmarks/results/imagenette-latency/seed-$seed" "${LSETS[@]}" "${only[@]}"
  done
fi
