#!/usr/bin/env bash
# Conversion fine-tuning (CFT) of the v4 AR re-ranker on a 2-core CPU, as one run that spans machines.
#
#   bash scripts/cft_cpu.sh run        start, or continue from the newest saved state (niced; log in RUN/train.log)
#   bash scripts/cft_cpu.sh snapshot   copy the resumable state into the repository (SAVED), to commit
#   bash scripts/cft_cpu.sh status     steps done and the validation curve so far
#
# The live run folder (RUN, git-ignored) holds state.pt, replaced every SAVE_EVERY steps (~2 minutes), so an
# interrupted run loses at most that. A new machine has only what the repository holds: `run` then starts
# from SAVED/state.pt when it is newer than RUN's (docs/recipe.md, "Resuming a run"). The start point is the
# graft of the v4 AR model with the shipped conversion's difference (`dgr2 model graft`), in candidates/.
# Settings (environment): DGR2_DATA_DIR, STEPS (the cosine schedule's length), VAL_USERS, EVAL_EVERY.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${NAME:-cft-v4avg3}
RUN=${RUN:-runs/$NAME}
SAVED=${SAVED:-candidates/runs/$NAME}
INIT=${INIT:-candidates/beauty-gr2/graft-v4avg3}
DGR2=${DGR2:-.venv/bin/dgr2}

steps_in() { [[ -f $1/log.jsonl ]] && tail -n 1 "$1/log.jsonl" | sed -n 's/.*"step": \([0-9]*\).*/\1/p' || echo 0; }

case ${1:-run} in
run)
    : "${DGR2_DATA_DIR:=../shared/data/amazon-beauty}"
    export DGR2_DATA_DIR PYTHONUNBUFFERED=1
    mkdir -p "$RUN"
    if compgen -G "$SAVED/state.pt.part-*" > /dev/null && (( $(steps_in "$SAVED") > $(steps_in "$RUN") )); then
        echo "continuing from the repository's state at step $(steps_in "$SAVED")"
        cat "$SAVED"/state.pt.part-* > "$RUN/state.pt.tmp" && mv "$RUN/state.pt.tmp" "$RUN/state.pt"
        cp "$SAVED/log.jsonl" "$RUN/"
    fi
    nice "$DGR2" train cft --from "$INIT" --store candidates --run-dir "$RUN" --batch-size 16 \
        --steps "${STEPS:-600}" --warmup 10 --validity-weight 1 --answer-threshold 0 --eval-every "${EVAL_EVERY:-60}" \
        --val-users "${VAL_USERS:-100}" --save-every "${SAVE_EVERY:-10}" \
        2>&1 | tr '\r' '\n' | grep --line-buffered -v "it/s\]$\|s/it\]$" >> "$RUN/train.log"
    ;;
snapshot)
    mkdir -p "$SAVED"
    # in parts of 25 MB (the repository takes no file over 30 MB); `run` joins them
    rm -f "$SAVED"/state.pt.part-*
    split -b 25M -d "$RUN/state.pt" "$SAVED/state.pt.part-"
    # the log up to the saved step only: a run resumed from this state logs the later steps again
    step=$(.venv/bin/python -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=False)['step'])" \
        "$RUN/state.pt")
    .venv/bin/python -c "import json, sys; [print(l, end='') for l in open(sys.argv[1]) if json.loads(l)['step'] <= int(sys.argv[2])]" \
        "$RUN/log.jsonl" "$step" > "$SAVED/log.jsonl"
    echo "saved step $(steps_in "$SAVED") in $SAVED: commit it (git add $SAVED)"
    ;;
status)
    echo "run: step $(steps_in "$RUN"); repository: step $(steps_in "$SAVED")"
    grep -h val_ndcg "$RUN/log.jsonl" 2>/dev/null | sed 's/.*"step": \([0-9]*\).*"val_ndcg@10": \([0-9.]*\), "val_valid_raw": \([0-9.]*\), "val_tokens_per_forward": \([0-9.]*\).*/step \1: ndcg@10 \2 valid_raw \3 tokens\/forward \4/'
    ;;
*)
    echo "usage: $0 run|snapshot|status" >&2
    exit 2
    ;;
esac
