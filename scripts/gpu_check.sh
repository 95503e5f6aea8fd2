#!/usr/bin/env bash
# GPU check: the Triton kernel tests compiled on CUDA, the three kernel benchmarks, then the decode
# benchmark (AR vs block diffusion) and the service load benchmark on the GPU.
# Run from the repository root on a machine with a CUDA GPU, torch and triton (no network needed):
#     bash scripts/gpu_check.sh
# Everything (logs, JSON, the plot, nvidia-smi -L) goes to docs/benchmarks/gpu-<gpu-name>/. Each step has
# its own time limit and together they stay under 8 minutes (120 + 3 x 25 + 175 + 100 = 470 s); the
# decode benchmark also stops starting new runs after 135 s and then writes what it measured (its
# JSON says "incomplete": true). Exits non-zero if any step failed.
# Prompts: Amazon Beauty from $DGR2_DATA_DIR (or shared/data/amazon-beauty beside or inside the
# checkout) when present, else the synthetic data; checkpoints: the store's ar and diffusion aliases
# ($DGR2_STORE, else the shipped store).
set -euo pipefail

PYTHON=${PYTHON:-python}
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9.' '-')
out="docs/benchmarks/gpu-${gpu_name%-}"
mkdir -p "$out"
nvidia-smi -L > "$out/nvidia-smi.txt"

unset TRITON_INTERPRET          # compiled kernels, not the CPU interpreter
export DGR2_KERNELS=triton      # the dispatching ops take the Triton path too
export DGR2_TEST_DEVICE=cuda    # tests/kernels on CUDA tensors (and with larger shapes)
if [[ -z "${DGR2_DATA_DIR:-}" ]]; then
    for d in shared/data/amazon-beauty ../shared/data/amazon-beauty; do
        if [[ -f "$d/Beauty.txt" ]]; then export DGR2_DATA_DIR="$d"; break; fi
    done
fi
echo "prompts: ${DGR2_DATA_DIR:-synthetic data (no DGR2_DATA_DIR)}"

failed=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s, log: $out/$name.log)"
    local start=$SECONDS
    if ! timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"; then
        echo "!! $name failed or ran past ${limit} s" | tee -a "$out/$name.log"
        failed=1
    fi
    echo "   $name took $((SECONDS - start)) s"
}

# the CPU smoke test of the benchmarks is left out: the benchmarks run for real below
# (GPU_CHECK_SKIP_TESTS=1 when scripts/gpu_train.sh already ran the kernel tests on the same machine)
[[ -n ${GPU_CHECK_SKIP_TESTS:-} ]] || step pytest 120 "$PYTHON" -m pytest tests/kernels -q --ignore=tests/kernels/test_kernel_benchmarks.py

for op in block_attention unmask_select answer_scores; do
    step "bench_$op" 25 "$PYTHON" -m "dgr2.bench.kernels.bench_$op" --device cuda --json --out "$out/kernels.json"
done

# one request per batch size and repeat (the full sweep must fit the limit); NDCG@10 on 64 users
step bench_decode 175 "$PYTHON" -m dgr2 bench decode --device cuda --requests 1 --repeats 3 \
    --ndcg-users 64 --ndcg-batch-size 64 --time-budget-s 135 \
    --out "$out/decode.json" --plot "$out/decode-throughput.png"

step bench_service 100 "$PYTHON" -m dgr2 bench service --device cuda --concurrency 1,4,16,64 --duration 5 \
    --out "$out/service.json"

echo "results in $out/ (kernels.json, decode.json, decode-throughput.png, service.json, *.log, nvidia-smi.txt);" \
     "failed=$failed"
exit "$failed"
