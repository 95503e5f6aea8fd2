#!/usr/bin/env bash
# The GPU training check, sized for one short GPU call (under 10 minutes on one H100):
#   - the Triton kernel tests compiled on CUDA (in the background, beside the training);
#   - the AR re-ranker on Beauty (`dgr2 train ar --device cuda`, batch 64, bf16 autocast, loader workers),
#     from scratch or warm-started from AR_INIT (an AR checkpoint folder or store reference; a v3 one,
#     like ar-small-gpu5 of the history, grows the <coN> tokens and trains on prompt v4); the learning rate
#     decays over AR_STEPS or AR_MIN, whichever ends first (--schedule-to-budget), likewise for CFT;
#   - CFT from that AR model when its validation NDCG@10 beats chance clearly (> 0.08);
#   - then, until EVAL_DEADLINE_S seconds after the start, the test-split evals of the new pair on all
#     users (or EVAL_LIMIT) with `recipe.ablation --device cuda`: AR for the 3 seeds first, then +CFT
#     (answer threshold 0 beside the plain threshold), then naive conversion. Each finished eval is one
#     line of OUT/ablation-full.jsonl, so a run cut by the deadline keeps what it measured.
# Usage, from the repository root with DGR2_DATA_DIR set: bash scripts/gpu_train.sh OUT_DIR
# Budgets (minutes/seconds) via AR_MIN, CFT_MIN, EVAL_DEADLINE_S; AR_PRESET (small; base for the capacity test of
# learned validity) and CFT_VALIDITY_WEIGHT (unset: CFT's default); after CFT, `dgr2 probe-validity` on
# PROBE_USERS (64) sampled validation users into OUT_DIR/probe-validity.json. Everything lands in OUT_DIR;
# the published checkpoints are in OUT_DIR/store.
set -uo pipefail
out=${1:?usage: gpu_train.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
: "${DGR2_DATA_DIR:?set DGR2_DATA_DIR to the Amazon Beauty folder}"
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu with tiny budgets smoke-tests the script itself
nvidia-smi -L > "$out/nvidia-smi.txt" 2>&1

[[ $DEVICE == cuda ]] && (unset TRITON_INTERPRET; DGR2_KERNELS=triton DGR2_TEST_DEVICE=cuda timeout 150 "$PYTHON" -m pytest tests/kernels -q \
    --ignore=tests/kernels/test_kernel_benchmarks.py > "$out/pytest-kernels.log" 2>&1; echo "rc=$?" >> "$out/pytest-kernels.log") &

common=(--device "$DEVICE" --loader-workers "${LOADER_WORKERS:-10}" --data-dir "$DGR2_DATA_DIR" --store "$out/store" --val-users "${VAL_USERS:-200}")
start=(--preset "${AR_PRESET:-small}")  # from scratch, or a warm start (whose preset is the checkpoint's)
[[ -n ${AR_INIT:-} ]] && start=(--init-from "$AR_INIT" --lr "${AR_LR:-1e-3}")
"$PYTHON" -m dgr2 train ar "${common[@]}" "${start[@]}" --run-dir "$out/ar" --batch-size "${AR_BATCH:-64}" \
    --steps "${AR_STEPS:-3000}" --time-budget-min "${AR_MIN:-3.5}" --schedule-to-budget --eval-every "${AR_EVAL_EVERY:-500}" \
    2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$" > "$out/ar.log"
ndcg=$("$PYTHON" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if 'val_ndcg@10' in l]; print(r[-1]['val_ndcg@10'] if r else 0)" "$out/ar/log.jsonl" 2>/dev/null || echo 0)
echo "AR final validation NDCG@10: $ndcg"
if "$PYTHON" -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$ndcg" "${CFT_IF_NDCG:-0.08}"; then
    validity=()
    [[ -n ${CFT_VALIDITY_WEIGHT:-} ]] && validity=(--validity-weight "$CFT_VALIDITY_WEIGHT")
    "$PYTHON" -m dgr2 train cft "${common[@]}" --from beauty-gr2:ar --run-dir "$out/cft" "${validity[@]}" \
        --batch-size "${CFT_BATCH:-32}" --steps "${CFT_STEPS:-800}" --time-budget-min "${CFT_MIN:-1.3}" --schedule-to-budget \
        --eval-every "${CFT_EVAL_EVERY:-400}" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$" > "$out/cft.log"
    # the per-rank validity error the conversion makes on its own (docs/results.md, "Learned validity")
    "$PYTHON" -m dgr2 probe-validity --store "$out/store" --checkpoint beauty-gr2:cft --data-dir "$DGR2_DATA_DIR" \
        --sample "${PROBE_USERS:-64}" --json > "$out/probe-validity.json" 2>> "$out/cft.log"
else
    echo "CFT skipped: the AR model is not clearly above chance (0.045)"
fi

# full test-split evals until the deadline: AR first (the all-users accuracy table), then the diffusion rows
eval_deadline=${EVAL_DEADLINE_S:-0}
ablation=("$PYTHON" -m dgr2.recipe.evals.ablation --store "$out/store" --split test --seeds 12345,1,2 --device "$DEVICE"
          --batch-size "${EVAL_BATCH:-1024}" --out "$out/ablation-full.jsonl")
[[ -n ${EVAL_LIMIT:-} ]] && ablation+=(--limit "$EVAL_LIMIT")
for rows in "AR" "+CFT" "naive conversion"; do
    left=$((eval_deadline - SECONDS))
    (( left > 20 )) || break
    extra=()
    [[ $rows == "+CFT" ]] && extra=(--answer-threshold 0 --answer-threshold-rows +CFT)
    echo "evals: $rows (${left} s left)"
    timeout "$left" "${ablation[@]}" --rows "$rows" "${extra[@]}" > /dev/null 2>> "$out/ablation-full.log"
done
"$PYTHON" -m dgr2.recipe.evals.ablation --out "$out/ablation-full.jsonl" --table 2>/dev/null
wait
tail -n 3 "$out"/pytest-kernels.log 2>/dev/null
