# Sourced by the CPU run scripts: a training run's resumable state kept in the repository, so that a run
# spans machines (docs/recipe.md, "Resuming a run"). RUN is the live, git-ignored run folder; SAVED the
# committed copy: state.pt in 25 MB parts (the repository takes no file over 30 MB) and log.jsonl. PYTHON: the
# interpreter with torch (default .venv/bin/python).

steps_in() { [[ -f $1/log.jsonl ]] && tail -n 1 "$1/log.jsonl" | sed -n 's/.*"step": \([0-9]*\).*/\1/p' || echo 0; }

# before a run: take the repository's state when it is ahead of the live folder's (a new machine)
join_saved() {
    local run=$1 saved=$2
    mkdir -p "$run"
    if compgen -G "$saved/state.pt.part-*" > /dev/null && (( $(steps_in "$saved") > $(steps_in "$run") )); then
        echo "continuing from the repository's state at step $(steps_in "$saved")"
        cat "$saved"/state.pt.part-* > "$run/state.pt.tmp" && mv "$run/state.pt.tmp" "$run/state.pt"
        cp "$saved/log.jsonl" "$run/"
    fi
}

# the live state into the repository, to commit
snapshot() {
    local run=$1 saved=$2
    mkdir -p "$saved"
    rm -f "$saved"/state.pt.part-*
    split -b 25M -d "$run/state.pt" "$saved/state.pt.part-"
    # the log up to the saved step, one record per step: the trainer's own rule for a resumed run (RunDir.rewind_log)
    cp "$run/log.jsonl" "$saved/log.jsonl"
    "${PYTHON:-.venv/bin/python}" -c "
import sys, torch
from dgr2.recipe.trainer import RunDir
RunDir(sys.argv[2]).rewind_log(torch.load(sys.argv[1], weights_only=False)['step'])" "$run/state.pt" "$saved"
    echo "saved step $(steps_in "$saved") in $saved: commit it (git add $saved)"
}

# steps done here and in the repository, and the validation points so far
run_status() {
    local run=$1 saved=$2
    echo "run: step $(steps_in "$run"); repository: step $(steps_in "$saved")"
    [[ -f $run/log.jsonl ]] || return 0
    "${PYTHON:-.venv/bin/python}" - "$run/log.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "val_ndcg@10" not in r:
        continue
    out = f"step {r['step']}: ndcg@10 {r['val_ndcg@10']} valid_raw {r['val_valid_raw']} " \
          f"tokens/forward {r.get('val_tokens_per_forward')}"
    if free := r.get("val_unconstrained"):
        out += f" | unconstrained: ndcg@10 {free['ndcg@10']} valid_raw {free['valid_raw']}"
        if "banned_mass" in free:
            out += f" banned mass {free['banned_mass']}"
    print(out)
EOF
}

# a training command's output into RUN/train.log without the progress bar's redraws
log_to() { tr '\r' '\n' | grep --line-buffered -v "it/s\]$\|s/it\]$" >> "$1/train.log"; }
