#!/usr/bin/env bash
# The Toys and Games pair on a 2-core CPU, started from the Beauty models (docs/recipe.md, "Another catalog"):
#
#   bash scripts/toys_cpu.sh data       the Toys folder with attribute 1 not a brand, in data/ (git-ignored)
#   bash scripts/toys_cpu.sh transfer   the Beauty AR model moved onto the Toys catalog (`dgr2 model transfer`)
#   bash scripts/toys_cpu.sh ar         AR fine-tuning on Toys from the transfer; resumable (niced; RUN/train.log)
#   bash scripts/toys_cpu.sh rule       a copy of the Toys folder with its own evidence rule (`dgr2 fit-rule --out`)
#   bash scripts/toys_cpu.sh ar-rule    the same AR fine-tuning on that copy: traces by the Toys rule (ar-rule-s0)
#   bash scripts/toys_cpu.sh graft      the conversion's start: Toys AR + (Beauty CFT - its AR parent)
#   bash scripts/toys_cpu.sh cft        the conversion (CFT) on Toys from the graft; resumable
#   bash scripts/toys_cpu.sh eval ar|cft    all test users x 3 seeds of the AR model or its conversion; resumable
#                                       (scripts/eval_all_users.sh; results in candidates/runs/toys-eval-ar|cft)
#   bash scripts/toys_cpu.sh snapshot ar|ar-rule|cft   the run's resumable state into candidates/runs/, to commit
#   bash scripts/toys_cpu.sh status ar|ar-rule|cft
#
# Budgets (steps of 16 sequences; AR_STEPS, CFT_STEPS): AR 250 (~4 s a step alone), CFT 300 (~12 s).
# Models go to the `candidates` store under the name toys-gr2. TOYS_DIR: the S3-Rec Toys folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/run_state.sh
TOYS_DIR=${TOYS_DIR:-../shared/data/amazon-toys}
DATA=${DATA:-data/toys-no-brand-1}
STORE=candidates NAME=toys-gr2
# the served Beauty pair, by folder (the store aliases move when a new pair ships)
BEAUTY_AR=dgr2/model_store/beauty-gr2/ar-small-v4avg3 BEAUTY_CFT=dgr2/model_store/beauty-gr2/cft-graft-v4avg3
DGR2=${DGR2:-.venv/bin/dgr2}
export PYTHONUNBUFFERED=1

run_of() { echo "runs/toys-$1"; }
saved_of() { echo "candidates/runs/toys-$1"; }

case ${1:-} in
data)
    # attribute 1 stands first on 20% of Toys items and does not behave like a brand (docs/data.md)
    [[ -f $DATA/items.jsonl ]] && { echo "$DATA exists"; exit 0; }
    "$DGR2" data import --data-dir "$TOYS_DIR" --out "$DATA.tmp"
    .venv/bin/python -c 'import json, sys
for r in map(json.loads, open(sys.argv[1])):
    print(json.dumps({**r, "brand": None if r["brand"] == "1" else r["brand"]}))' "$DATA.tmp/items.jsonl" \
        > "$DATA.tmp/items.edited" && mv "$DATA.tmp/items.edited" "$DATA.tmp/items.jsonl" && mv "$DATA.tmp" "$DATA"
    ;;
transfer)
    nice "$DGR2" model transfer "$BEAUTY_AR" --data-dir "$DATA" --store "$STORE" --name "$NAME" \
        --version transfer-ar-v4avg3
    ;;
ar)
    join_saved "$(run_of ar)" "$(saved_of ar)"
    nice "$DGR2" train ar --init-from "$NAME:transfer-ar-v4avg3" --store "$STORE" --name "$NAME" --data-dir "$DATA" \
        --run-dir "$(run_of ar)" --steps "${AR_STEPS:-250}" --batch-size 16 --lr 3e-4 --warmup 10 \
        --eval-every 125 --val-users 100 --save-every 10 2>&1 | log_to "$(run_of ar)"
    ;;
rule)
    [[ -f $DATA-rule/evidence-rule.json ]] && { echo "$DATA-rule exists"; exit 0; }
    rm -rf "$DATA-rule.tmp" && cp -r "$DATA" "$DATA-rule.tmp"
    nice "$DGR2" fit-rule --data-dir "$DATA" --fit-users 4000 --test-users 4000 --test-seeds 12345,1 \
        --out "$DATA-rule.tmp/evidence-rule.json" && mv "$DATA-rule.tmp" "$DATA-rule"
    ;;
ar-rule)
    join_saved "$(run_of ar-rule)" "$(saved_of ar-rule)"
    nice "$DGR2" train ar --init-from "$NAME:transfer-ar-v4avg3" --store "$STORE" --name "$NAME" \
        --data-dir "$DATA-rule" --version ar-rule-s0 --run-dir "$(run_of ar-rule)" --steps "${AR_STEPS:-250}" \
        --batch-size 16 --lr 3e-4 --warmup 10 --eval-every 125 --val-users 100 --save-every 10 2>&1 \
        | log_to "$(run_of ar-rule)"
    ;;
graft)
    # the AR run publishes ar-small-s0 (preset of its start, seed 0)
    nice "$DGR2" model graft "$STORE/$NAME/ar-small-s0" "$BEAUTY_CFT" "$BEAUTY_AR" --store "$STORE" --name "$NAME" \
        --version graft-ar
    ;;
cft)
    join_saved "$(run_of cft)" "$(saved_of cft)"
    nice "$DGR2" train cft --from "$NAME:graft-ar" --store "$STORE" --name "$NAME" --data-dir "$DATA" \
        --run-dir "$(run_of cft)" --steps "${CFT_STEPS:-300}" --batch-size 16 --warmup 10 --validity-weight 1 \
        --answer-threshold 0 --eval-every 60 --val-users 100 --save-every 10 2>&1 | log_to "$(run_of cft)"
    ;;
eval)
    # the batch size is part of each resume file's settings: AR 50, block diffusion 25 (as on Beauty)
    case ${2:-} in
    ar) ckpt=ar-small-s0 decoder=ar batch=50 ;;
    cft) ckpt=cft-graft-ar decoder=diffusion batch=25 ;;
    *) echo "usage: $0 eval ar|cft" >&2; exit 2 ;;
    esac
    PATH=.venv/bin:$PATH DGR2_DATA_DIR=$DATA DECODER=$decoder EVAL_BATCH=$batch nice bash scripts/eval_all_users.sh \
        "$NAME:$ckpt" "candidates/runs/toys-eval-$2" --store "$STORE"
    ;;
snapshot|status)
    [[ ${2:-} =~ ^(ar|ar-rule|cft)$ ]] || { echo "usage: $0 $1 ar|ar-rule|cft" >&2; exit 2; }
    if [[ $1 == snapshot ]]; then snapshot "$(run_of "$2")" "$(saved_of "$2")"; else run_status "$(run_of "$2")" "$(saved_of "$2")"; fi
    ;;
*)
    echo "usage: $0 data|transfer|ar|rule|ar-rule|graft|cft|eval ar|cft|snapshot RUN|status RUN (RUN: ar, ar-rule, cft)" >&2
    exit 2
    ;;
esac
