#!/usr/bin/env bash
# The Beauty recipe end to end, as the CPU-trained pairs of 2026-11-26 were produced: AR -> CFT -> OPD -> RL, each
# stage with its own time budget, resumable (re-running skips finished stages via their run dirs),
# then the ablation evals. Usage: bash scripts/beauty_recipe.sh [STORE] [RUNS]
# Budgets (minutes): AR_MIN CFT_MIN OPD_MIN RL_MIN; validation: VAL_USERS every EVAL_EVERY steps;
# ablation: ABLATION_USERS, ABLATION_SEEDS.
set -euo pipefail
STORE=${1:-runs/store}
RUNS=${2:-runs}
: "${DGR2_DATA_DIR:=../shared/data/amazon-beauty}"
export DGR2_DATA_DIR
common=(--store "$STORE" --eval-every "${EVAL_EVERY:-200}" --val-users "${VAL_USERS:-200}")
done_stage() { [ -f "$RUNS/$1/published" ]; }
stage() {  # stage NAME ARGS...: train once, mark published
  local name=$1; shift
  if done_stage "$name"; then echo "skip $name (published)"; return; fi
  dgr2 train "$name" "${common[@]}" --run-dir "$RUNS/$name" "$@" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$" \
    > "$RUNS/$name.log"
  touch "$RUNS/$name/published"
}
stage ar  --time-budget-min "${AR_MIN:-55}"
stage cft --from beauty-gr2:ar --time-budget-min "${CFT_MIN:-15}"
stage opd --from beauty-gr2:cft --teacher beauty-gr2:ar --time-budget-min "${OPD_MIN:-9}" --eval-every 100
stage rl  --from beauty-gr2:opd --time-budget-min "${RL_MIN:-9}" --eval-every 100
python -m dgr2.recipe.evals.ablation --store "$STORE" --split test --limit "${ABLATION_USERS:-200}" \
  --seeds "${ABLATION_SEEDS:-12345,1,2}" --out "$RUNS/ablation.jsonl"
