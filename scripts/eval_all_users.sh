#!/usr/bin/env bash
# The all-users evaluation of one checkpoint: the test split, 100 candidates, every user, for the three
# negative-sampling seeds in turn, resumable across stops and restarts. Each finished batch is on disk
# (`dgr2 eval --resume-file`); stop it at any time and run the same command again to go on. A seed's
# JSON lands in OUT/test-all-SEED.json when all of its users are done; when every seed is done, the
# mean ± standard error over seeds (`dgr2 summarize`) lands in OUT/summary.json and OUT/summary.txt.
# Usage, from the repository root with DGR2_DATA_DIR set:
#   bash scripts/eval_all_users.sh CHECKPOINT OUT_DIR [extra dgr2 eval flags, e.g. --store DIR]
# DECODER=diffusion evaluates the other decoder. The batch size is part of the resume file's settings
# (EVAL_BATCH, default 50 on CPU): keep it.
set -euo pipefail
ckpt=${1:?usage: eval_all_users.sh CHECKPOINT OUT_DIR [dgr2 eval flags]}
out=${2:?usage: eval_all_users.sh CHECKPOINT OUT_DIR [dgr2 eval flags]}
shift 2
: "${DGR2_DATA_DIR:?set DGR2_DATA_DIR to the Amazon Beauty folder}"
mkdir -p "$out"
for seed in ${SEEDS:-12345 1 2}; do
    [[ -s $out/test-all-$seed.json ]] && { echo "seed $seed: done ($out/test-all-$seed.json)"; continue; }
    echo "seed $seed: $(date -u +%FT%TZ) start/resume" >> "$out/progress.log"
    dgr2 eval --checkpoint "$ckpt" --decoder "${DECODER:-ar}" --split test --candidates 100 --neg-seed "$seed" \
        --batch-size "${EVAL_BATCH:-50}" --json --resume-file "$out/test-all-$seed.resume.jsonl" "$@" \
        > "$out/test-all-$seed.json.tmp" 2>> "$out/progress.log"
    mv "$out/test-all-$seed.json.tmp" "$out/test-all-$seed.json"
    echo "seed $seed: $(date -u +%FT%TZ) done" >> "$out/progress.log"
done
# mean ± standard error over the seeds (refused, by name, if the per-seed results do not belong together)
results=()
for seed in ${SEEDS:-12345 1 2}; do results+=("$out/test-all-$seed.json"); done
dgr2 summarize "${results[@]}" --json > "$out/summary.json"
dgr2 summarize "${results[@]}" | tee "$out/summary.txt"
