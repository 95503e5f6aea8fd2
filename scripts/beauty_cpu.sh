#!/usr/bin/env bash
# On-policy distillation (OPD) of the served Beauty diffusion model from the served AR model on a 2-core CPU,
# as a run that spans machines (docs/recipe.md, "Resuming a run"):
#
#   bash scripts/beauty_cpu.sh opd            start, or continue from the newest saved state (niced; runs/opd-v4avg3/train.log)
#   bash scripts/beauty_cpu.sh snapshot opd   the run's resumable state into candidates/runs/opd-v4avg3/, to commit
#   bash scripts/beauty_cpu.sh status opd     steps done and the validation curve so far
#
# The served conversion itself came from `dgr2 train cft` on this CPU (600 steps of 16 from a graft; the
# command and its log: docs/results.md, "The conversion on the CPU"). Settings (environment): DGR2_DATA_DIR,
# OPD_STEPS (200), OPD_BATCH (8), OPD_LR (3e-5: at 3e-4 the student collapsed within 50 steps), VAL_USERS (100).
# The result goes to the candidates store.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/run_state.sh
: "${DGR2_DATA_DIR:=../shared/data/amazon-beauty}"
export DGR2_DATA_DIR PYTHONUNBUFFERED=1
# the served pair, by folder (the store aliases move when a new pair ships)
AR=dgr2/model_store/beauty-gr2/ar-small-v4avg3 CFT=dgr2/model_store/beauty-gr2/cft-graft-v4avg3
DGR2=${DGR2:-.venv/bin/dgr2}
RUN=runs/opd-v4avg3 SAVED=candidates/runs/opd-v4avg3

case ${1:-} in
opd)
    join_saved "$RUN" "$SAVED"
    nice "$DGR2" train opd --from "$CFT" --teacher "$AR" --store candidates --run-dir "$RUN" --reverse-kl \
        --batch-size "${OPD_BATCH:-8}" --steps "${OPD_STEPS:-200}" --lr "${OPD_LR:-3e-5}" --warmup 10 --eval-every 50 \
        --val-users "${VAL_USERS:-100}" --save-every 5 2>&1 | log_to "$RUN"
    ;;
snapshot|status)
    [[ ${2:-} == opd ]] || { echo "usage: $0 $1 opd" >&2; exit 2; }
    if [[ $1 == snapshot ]]; then snapshot "$RUN" "$SAVED"; else run_status "$RUN" "$SAVED"; fi
    ;;
*)
    echo "usage: $0 opd|snapshot opd|status opd" >&2
    exit 2
    ;;
esac
