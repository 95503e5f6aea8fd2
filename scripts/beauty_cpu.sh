#!/usr/bin/env bash
# Training runs on the served Beauty diffusion model, on a 2-core CPU, as runs that span machines
# (docs/recipe.md, "Resuming a run"):
#
#   bash scripts/beauty_cpu.sh opd                 on-policy distillation from the served AR model (runs/opd-v4avg3)
#   bash scripts/beauty_cpu.sh opd-anchor          the same with the conversion's own loss on the data beside it
#                                                  (OPD_ANCHOR, 1), so the trace stays the rule's (runs/opd-anchor-v4avg3)
#   bash scripts/beauty_cpu.sh validity            CFT continued with validity weighted above the ranking, so the
#                                                  model itself writes valid rankings (runs/validity-v4avg3)
#   bash scripts/beauty_cpu.sh validity-more       150 more of those steps from the validity candidate (runs/validity-more-v4avg3)
#   bash scripts/beauty_cpu.sh validity-margin     the same with the validity term raised by a margin (--validity-margin 8,
#                                                  weight 1), whose pull does not fade with the banned mass
#                                                  (runs/validity-margin-v4avg3)
#   bash scripts/beauty_cpu.sh validity-target     the same with the banned slots weighed against the target alone
#                                                  (--validity-against target, margin 6; runs/validity-target-v4avg3)
#   bash scripts/beauty_cpu.sh validity-ties       validity-more with the answer's equal strengths in slot order, the
#                                                  order the trace lists them (--answer-ties slot; runs/validity-ties-v4avg3)
#   bash scripts/beauty_cpu.sh opd-kept            OPD with validity weighted (8), rollouts under the constraint, from
#                                                  the validity candidate (runs/opd-kept-v4avg3)
#   bash scripts/beauty_cpu.sh opd-free            the same on the model's own unconstrained answers
#                                                  (runs/opd-free-v4avg3)
#   bash scripts/beauty_cpu.sh opd-cut             the same, each answer cut at its first repeated slot
#                                                  (runs/opd-cut-v4avg3)
#   bash scripts/beauty_cpu.sh rl                  RL (GRPO, reward NDCG@10, rollouts under the constraint as served) from
#                                                  the OPD run's model (runs/rl-v4avg3)
#   bash scripts/beauty_cpu.sh rl-dense            the same, paid NDCG over the whole list, so that every rank earns
#                                                  something and a group's rollouts rarely tie (runs/rl-dense-v4avg3)
#   bash scripts/beauty_cpu.sh rl-free             RL on unconstrained rollouts, paid per rank the guard need not
#                                                  change, from the validity candidate (runs/rl-free-v4avg3)
#   bash scripts/beauty_cpu.sh ablation            the recipe's stages on the served pair (AR, CFT, +OPD, +RL from
#                                                  `opd-anchor` and `rl`), 1,000 sampled test users x 3 seeds; then on
#                                                  one seed the naive conversion and every stage without the answer
#                                                  constraint; resumable, per-user ranks kept (candidates/runs/ablation-v4avg3)
#   bash scripts/beauty_cpu.sh snapshot RUN        RUN (opd, opd-anchor, validity[-more|-margin|-target|-ties], opd-kept, opd-free, opd-cut, rl, rl-dense, rl-free): its
#                                                  state into candidates/runs/, to commit
#   bash scripts/beauty_cpu.sh status RUN          steps done and the validation curve so far
#
# Each run starts, or continues from the newest saved state (here or in the repository), niced, its output in
# runs/NAME/train.log.
# The served conversion itself came from `dgr2 train cft` on this CPU (600 steps of 16 from a graft; the
# command and its log: docs/results.md, "The conversion on the CPU"). Settings (environment): DGR2_DATA_DIR,
# OPD_STEPS (300; 200 for opd-anchor), OPD_BATCH (8), OPD_LR (5e-5: at 3e-4 the student collapsed within 50 steps), OPD_EVAL_EVERY (50),
# OPD_VALIDITY_WEIGHT (1, the served conversion's own; 8 for opd-kept/free/cut), VAL_USERS (200 for the served-pair runs, 100 for those from the validity candidate);
# VALIDITY_STEPS (300; 150 for validity-more/margin/target/ties), VALIDITY_WEIGHT (4; 1 for validity-margin/target; 8 for opd-kept/free/cut),
# VALIDITY_MARGIN (8; 6 for validity-target), VALIDITY_LR (3e-4); RL_STEPS (150),
# RL_BATCH (4), RL_GROUP (4), RL_LR (1e-5), RL_PENALTY (1), RL_EVAL_EVERY (30; 50 for rl-free). Results go to the candidates store.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/run_state.sh
: "${DGR2_DATA_DIR:=../shared/data/amazon-beauty}"
export DGR2_DATA_DIR PYTHONUNBUFFERED=1
# the served pair, by folder (the store aliases move when a new pair ships)
AR=dgr2/model_store/beauty-gr2/ar-small-v4avg3 CFT=dgr2/model_store/beauty-gr2/cft-graft-v4avg3
VALIDITY=candidates/beauty-gr2/cft-validity-v4avg3  # the served conversion + 300 CFT steps at validity weight 4
OPD=candidates/beauty-gr2/opd-anchor-v4avg3  # what `opd-anchor` publishes: the stage RL starts from
RL=candidates/beauty-gr2/rl-v4avg3  # what `rl` publishes
DGR2=${DGR2:-.venv/bin/dgr2}
run_of() { echo "runs/$1-v4avg3"; }
saved_of() { echo "candidates/runs/$1-v4avg3"; }

RUNS="opd opd-anchor validity validity-more validity-margin validity-target validity-ties opd-kept opd-free opd-cut rl rl-dense rl-free"

case ${1:-} in
opd|opd-anchor|opd-kept|opd-free|opd-cut)
    # from the served conversion at its own validity weight (opd-anchor: with the data's loss beside the KL), or
    # from the validity candidate at weight 8 with three ways to decode the rollouts: under the constraint
    # (opd-kept), without it (opd-free), without it and cut at the first fault (opd-cut)
    # the served-pair runs validate on 200 users (their curves in docs/results.md), the validity candidate's on 100
    run=$1 from=$VALIDITY weight=${VALIDITY_WEIGHT:-8} extra=() steps=${OPD_STEPS:-300} users=${VAL_USERS:-100}
    case $run in
    opd) from=$CFT weight=${OPD_VALIDITY_WEIGHT:-1} users=${VAL_USERS:-200} ;;
    opd-anchor) from=$CFT weight=${OPD_VALIDITY_WEIGHT:-1} extra=(--anchor-weight "${OPD_ANCHOR:-1}")
        steps=${OPD_STEPS:-200} users=${VAL_USERS:-200} ;;
    opd-free) extra=(--unconstrained-rollouts) ;;
    opd-cut) extra=(--unconstrained-rollouts --cut-at-first-fault) ;;
    esac
    join_saved "$(run_of "$run")" "$(saved_of "$run")"
    nice "$DGR2" train opd --from "$from" --teacher "$AR" --store candidates --run-dir "$(run_of "$run")" \
        --version "$run-v4avg3" --reverse-kl "${extra[@]}" --validity-weight "$weight" \
        --batch-size "${OPD_BATCH:-8}" --steps "$steps" --lr "${OPD_LR:-5e-5}" --warmup 10 \
        --eval-every "${OPD_EVAL_EVERY:-50}" --val-users "$users" --save-every 5 2>&1 | log_to "$(run_of "$run")"
    ;;
validity|validity-more|validity-margin|validity-target|validity-ties)
    # validity: from the served conversion into the candidates store; -more and -margin: 150 steps on from the
    # validity candidate into a scratch store (runs/store, so the candidates' aliases stay), the term as it was
    # (weight 4) or at weight 1 raised by a margin of 8: the same pull at the start, one that does not fade;
    # -target: the banned slots weighed against the target alone (margin 6), so that ending or breaking the answer
    # cannot pay the term, as it did in the margin run; -ties: -more with equal strengths answered in slot order
    # (results: docs/results.md, "Learned validity")
    run=$1 from=$CFT store=candidates weight=${VALIDITY_WEIGHT:-4} steps=${VALIDITY_STEPS:-300} extra=()
    if [[ $run != validity ]]; then
        from=$VALIDITY store=runs/store steps=${VALIDITY_STEPS:-150} extra=(--version "$run-v4avg3")
    fi
    case $run in
    validity-margin) weight=${VALIDITY_WEIGHT:-1} extra+=(--validity-margin "${VALIDITY_MARGIN:-8}") ;;
    validity-target) weight=${VALIDITY_WEIGHT:-1} extra+=(--validity-margin "${VALIDITY_MARGIN:-6}" --validity-against target) ;;
    validity-ties) extra+=(--answer-ties slot) ;;
    esac
    join_saved "$(run_of "$run")" "$(saved_of "$run")"
    nice "$DGR2" train cft --from "$from" --store "$store" --run-dir "$(run_of "$run")" --batch-size 16 \
        --steps "$steps" --lr "${VALIDITY_LR:-3e-4}" --warmup 10 \
        --validity-weight "$weight" --eval-every 50 --val-users "${VAL_USERS:-100}" --save-every 5 "${extra[@]}" \
        2>&1 | log_to "$(run_of "$run")"
    ;;
rl|rl-dense|rl-free)
    # from the anchored OPD model, paid NDCG@10 (rl) or NDCG over the whole list (rl-dense); rl-free: from the
    # validity candidate on unconstrained rollouts, paid less for each rank the guard had to change
    run=$1 from=$OPD every=${RL_EVAL_EVERY:-30} users=${VAL_USERS:-200} extra=(--reward-cutoff 10)
    case $run in
    rl-dense) extra=(--reward-cutoff 100) ;;
    rl-free) from=$VALIDITY every=${RL_EVAL_EVERY:-50} users=${VAL_USERS:-100}
        extra=(--unconstrained-rollouts --invalid-penalty "${RL_PENALTY:-1}") ;;
    esac
    join_saved "$(run_of "$run")" "$(saved_of "$run")"
    nice "$DGR2" train rl --from "$from" --store candidates --run-dir "$(run_of "$run")" --version "$run-v4avg3" \
        "${extra[@]}" --batch-size "${RL_BATCH:-4}" --group "${RL_GROUP:-4}" --steps "${RL_STEPS:-150}" \
        --lr "${RL_LR:-1e-5}" --warmup 5 --eval-every "$every" --val-users "$users" --save-every 5 2>&1 \
        | log_to "$(run_of "$run")"
    ;;
ablation)
    # a stage not trained yet is skipped by name; the same command later evaluates it
    out=candidates/runs/ablation-v4avg3
    mkdir -p "$out"
    common=(--split test --sample "${ABLATION_USERS:-1000}" --batch-size 25 --stage "+CFT+OPD=$OPD"
            --stage "+CFT+OPD+RL=$RL" --resume-dir "$out" --out "$out/ablation.jsonl")
    ablation() { nice "${PYTHON:-.venv/bin/python}" -m dgr2.recipe.evals.ablation "${common[@]}" "$@" 2>&1 \
        | tee -a "$out/progress.log"; }
    ablation --seeds 12345,1,2 --rows "AR,+CFT,+CFT+OPD,+CFT+OPD+RL"
    # one seed for the rest: unconstrained rows decode ~3 tokens a pass (8 minutes for 1,000 users alone) and the
    # naive conversion ~1 (15-20 minutes a row), so three seeds of them would add about two hours
    stages="naive conversion,+CFT,+CFT+OPD,+CFT+OPD+RL"
    ablation --seeds 12345 --rows "$stages" --unconstrained-rows "$stages"
    ;;
snapshot|status)
    [[ " $RUNS " == *" ${2:-} "* && -n ${2:-} ]] || { echo "usage: $0 $1 ${RUNS// /|}" >&2; exit 2; }
    if [[ $1 == snapshot ]]; then snapshot "$(run_of "$2")" "$(saved_of "$2")"
    else run_status "$(run_of "$2")" "$(saved_of "$2")"; fi
    ;;
*)
    echo "usage: $0 ${RUNS// /|}|ablation|snapshot RUN|status RUN" >&2
    exit 2
    ;;
esac
