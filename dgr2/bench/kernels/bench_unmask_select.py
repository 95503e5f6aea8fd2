"""Benchmark unmask_select: Triton kernels (one vocabulary pass + the rule) vs the torch reference.

    python -m dgr2.bench.kernels.bench_unmask_select [--device cuda] [--json | --out FILE]

Bytes (useful): the fp32 logits [B, S, V] read once + masked [B, S] read + tokens (int64), conf
(fp32) and unmask (bool) written. The reference also writes and re-reads a [B, S, V] softmax.
"""

from __future__ import annotations

import torch

from dgr2.bench.kernels.common import TRITON_NEEDS_CUDA, finish, measure, parse_args, triton_ready
from dgr2.kernels.unmask_select import unmask_select_ref, unmask_select_triton

S = 32  # the block-diffusion block length
THRESHOLD = 0.9
CASES = [(b, v) for v in (1003, 8191, 32003) for b in (1, 8, 32)]  # (B, V): V not a power of two


def make_inputs(B, V, device):
    g = torch.Generator(device=device).manual_seed(0)
    logits = 4 * torch.randn(B, S, V, generator=g, device=device)
    masked = torch.rand(B, S, generator=g, device=device) < 0.5
    return logits, masked


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    use_triton = triton_ready(args.device)
    rows = []
    for B, V in CASES:
        logits, masked = make_inputs(B, V, args.device)
        nbytes = logits.numel() * logits.element_size() + B * S * (1 + 8 + 4 + 1)
        case = {"B": B, "S": S, "V": V}
        impls = {"torch_ref": lambda a=(logits, masked): unmask_select_ref(*a, THRESHOLD)}
        if use_triton:
            impls = {"triton": lambda a=(logits, masked): unmask_select_triton(*a, THRESHOLD), **impls}
            ours, ref = unmask_select_triton(logits, masked, THRESHOLD), unmask_select_ref(logits, masked, THRESHOLD)
            case["tokens_equal_ref"] = bool(torch.equal(ours[0], ref[0]))
            case["max_conf_diff_vs_ref"] = float((ours[1] - ref[1]).abs().max())
        for name, fn in impls.items():
            rows.append(measure(name, fn, args.device, args.reps, case, nbytes))
    notes = {
        "shapes": f"S={S} fp32 logits, threshold={THRESHOLD}, half the positions masked",
        "bytes": "logits read once + masked + tokens/conf/unmask written; same count for every impl",
    }
    if not use_triton:
        notes["triton"] = TRITON_NEEDS_CUDA
    finish(args, "unmask_select", rows, notes)


if __name__ == "__main__":
    main()
