#!/usr/bin/env bash
# GPU check of the Triton kernels: kernel tests compiled on CUDA, then the three benchmarks.
# Run from the repository root on a machine with a CUDA GPU, torch and triton (no network needed):
#     bash bench/gpu_check.sh
# Everything (logs, JSON, nvidia-smi -L) goes to bench/results/gpu-<gpu-name>/. At most 7 minutes
# (each step has its own time limit); exits non-zero if any step failed.
set -euo pipefail

PYTHON=${PYTHON:-python}
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9.' '-')
out="bench/results/gpu-${gpu_name%-}"
mkdir -p "$out"
nvidia-smi -L > "$out/nvidia-smi.txt"

unset TRITON_INTERPRET          # compiled kernels, not the CPU interpreter
export DGR2_KERNELS=triton      # the dispatching ops take the Triton path too
export DGR2_TEST_DEVICE=cuda    # tests/kernels on CUDA tensors (and with larger shapes)

failed=0
echo "== pytest tests/kernels (log: $out/pytest.log)"
if ! timeout 240 "$PYTHON" -m pytest tests/kernels -q 2>&1 | tee "$out/pytest.log"; then
    failed=1
fi

for op in block_attention unmask_select answer_scores; do
    echo "== bench_$op (log: $out/bench_$op.log)"
    if ! timeout 60 "$PYTHON" -m "bench.kernels.bench_$op" --device cuda --json --out "$out/kernels.json" \
            2>&1 | tee "$out/bench_$op.log"; then
        failed=1
    fi
done

echo "results in $out/ (kernels.json, pytest.log, bench_*.log, nvidia-smi.txt); failed=$failed"
exit "$failed"
