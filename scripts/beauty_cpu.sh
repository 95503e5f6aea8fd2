#!/usr/bin/env bash
# The Beauty diffusion model on a 2-core CPU, from the candidate AR model ar-small-v4avg3, as runs that span
# machines (docs/recipe.md, "Resuming a run"):
#
#   bash scripts/beauty_cpu.sh cft        CFT from the graft (ar-small-v4avg3 + the shipped conversion's difference)
#   bash scripts/beauty_cpu.sh opd        on-policy distillation of that conversion from ar-small-v4avg3
#   bash scripts/beauty_cpu.sh snapshot cft|opd   the run's resumable state into candidates/runs/, to commit
#   bash scripts/beauty_cpu.sh status cft|opd     steps done and the validation curve so far
#
# Each run is niced, logs to runs/<name>/train.log and continues from the newest saved state, the live one or
# the repository's. Settings (environment): DGR2_DATA_DIR, CFT_STEPS (600), OPD_STEPS (200), OPD_BATCH (8),
# VAL_USERS (100).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/run_state.sh
: "${DGR2_DATA_DIR:=../shared/data/amazon-beauty}"
export DGR2_DATA_DIR PYTHONUNBUFFERED=1
STORE=candidates AR=beauty-gr2:ar-small-v4avg3 GRAFT=beauty-gr2:graft-v4avg3 CFT=beauty-gr2:cft-graft-v4avg3
DGR2=${DGR2:-.venv/bin/dgr2}

run_of() { echo "runs/$1-v4avg3"; }
saved_of() { echo "candidates/runs/$1-v4avg3"; }

case ${1:-} in
cft)
    join_saved "$(run_of cft)" "$(saved_of cft)"
    nice "$DGR2" train cft --from "$GRAFT" --store "$STORE" --run-dir "$(run_of cft)" --batch-size 16 \
        --steps "${CFT_STEPS:-600}" --warmup 10 --validity-weight 1 --answer-threshold 0 --eval-every 60 \
        --val-users "${VAL_USERS:-100}" --save-every 10 2>&1 | log_to "$(run_of cft)"
    ;;
opd)
    join_saved "$(run_of opd)" "$(saved_of opd)"
    nice "$DGR2" train opd --from "$CFT" --teacher "$AR" --store "$STORE" --run-dir "$(run_of opd)" --reverse-kl \
        --batch-size "${OPD_BATCH:-8}" --steps "${OPD_STEPS:-200}" --warmup 10 --eval-every 50 \
        --val-users "${VAL_USERS:-100}" --save-every 5 2>&1 | log_to "$(run_of opd)"
    ;;
snapshot|status)
    [[ ${2:-} == cft || ${2:-} == opd ]] || { echo "usage: $0 $1 cft|opd" >&2; exit 2; }
    if [[ $1 == snapshot ]]; then snapshot "$(run_of "$2")" "$(saved_of "$2")"; else run_status "$(run_of "$2")" "$(saved_of "$2")"; fi
    ;;
*)
    echo "usage: $0 cft|opd|snapshot cft|opd|status cft|opd" >&2
    exit 2
    ;;
esac
