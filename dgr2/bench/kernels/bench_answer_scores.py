"""Benchmark answer_scores: the Triton gather + log-softmax kernel vs the torch reference.

    python -m dgr2.bench.kernels.bench_answer_scores [--device cuda] [--json | --out FILE]

Bytes (useful): the B*N*Kmax gathered fp32 logits + slot ids + num_slots read, the [B, N, Kmax]
fp32 result written. (The gather touches one 32-byte sector per logit, so DRAM traffic is higher.)
"""

from __future__ import annotations

import torch

from dgr2.bench.kernels.common import TRITON_NEEDS_CUDA, finish, measure, parse_args, triton_ready
from dgr2.kernels.answer_scores import answer_scores_ref, answer_scores_triton

KMAX = 100
# (B, N, V): AR answer rows (N rank positions per request), diffusion decided positions (N=1)
CASES = [(b, 100, v) for v in (1003, 8191) for b in (8, 32)] + [(256, 1, 8191), (1024, 1, 8191)]


def make_inputs(B, N, V, device):
    g = torch.Generator(device=device).manual_seed(0)
    logits = 4 * torch.randn(B, N, V, generator=g, device=device)
    slot_ids = torch.randperm(V, generator=g, device=device)[:KMAX]
    num_slots = torch.randint(20, KMAX + 1, (B,), generator=g, device=device)
    return logits, slot_ids, num_slots


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    use_triton = triton_ready(args.device)
    rows = []
    for B, N, V in CASES:
        inputs = make_inputs(B, N, V, args.device)
        nbytes = 2 * B * N * KMAX * 4 + KMAX * 8 + B * 8
        case = {"B": B, "N": N, "V": V, "Kmax": KMAX}
        impls = {"torch_ref": lambda a=inputs: answer_scores_ref(*a)}
        if use_triton:
            impls = {"triton": lambda a=inputs: answer_scores_triton(*a), **impls}
            diff = (answer_scores_triton(*inputs) - answer_scores_ref(*inputs)).nan_to_num(0.0, 0.0, 0.0)
            case["max_abs_diff_vs_ref"] = float(diff.abs().max())
        for name, fn in impls.items():
            rows.append(measure(name, fn, args.device, args.reps, case, nbytes))
    notes = {
        "shapes": f"fp32 logits, Kmax={KMAX}, num_slots uniform in [20, {KMAX}]",
        "bytes": "gathered logits + ids read, [B, N, Kmax] fp32 written; same count for every impl",
    }
    if not use_triton:
        notes["triton"] = TRITON_NEEDS_CUDA
    finish(args, "answer_scores", rows, notes)


if __name__ == "__main__":
    main()
