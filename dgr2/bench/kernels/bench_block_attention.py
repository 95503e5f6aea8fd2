"""Benchmark block_attention: Triton kernel vs torch reference vs plain SDPA, decode-like shapes.

    python -m dgr2.bench.kernels.bench_block_attention [--device cuda] [--json | --out FILE]

Bytes (useful): q read + out written + the K and V rows each sequence may see
(``min(lens[b] + S, T)`` rows of every KV head), once. FLOPs: 4 * D per visible (query, key) pair
and query head (QK^T and PV). SDPA runs in the input dtype with the visibility mask precomputed
and KV heads expanded beforehand: the best plain-torch alternative, not the spec (the reference
upcasts to fp32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dgr2.bench.kernels.common import TRITON_NEEDS_CUDA, finish, measure, parse_args, triton_ready
from dgr2.kernels.block_attention import block_attention_ref, block_attention_triton, visible_keys

HQ, HKV, D, T = 8, 4, 64, 1024
DTYPE = torch.bfloat16
# (B, S, causal, lens): AR steps (S=1), denoising steps (S=32, bidirectional) on a full cache, a prefill
CASES = [(b, 1, True, T - 1) for b in (1, 8, 32)] + [(b, 32, False, T - 32) for b in (1, 8, 32)]
CASES += [(8, 512, True, 0)]


def make_inputs(B, S, causal, lens, device):
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, S, HQ, D, generator=g, device=device, dtype=DTYPE)
    k = torch.randn(B, T, HKV, D, generator=g, device=device, dtype=DTYPE)
    v = torch.randn(B, T, HKV, D, generator=g, device=device, dtype=DTYPE)
    lens_t = torch.full((B,), lens, dtype=torch.int64, device=device)
    causal_t = torch.full((B,), causal, dtype=torch.bool, device=device)
    return q, k, v, lens_t, causal_t


def sdpa_fn(q, k, v, lens, causal):
    """Plain SDPA in the input dtype on the keys any sequence may see. Mask and GQA head expansion are
    done once outside the timing: SDPA's own enable_gqa path has no fused kernel that takes a mask."""
    n_keys = min(int(lens.max()) + q.shape[1], k.shape[1])
    mask = visible_keys(lens, causal, q.shape[1], n_keys)[:, None]  # [B, 1, S, n_keys]
    group = q.shape[2] // k.shape[2]
    kt, vt = (t[:, :n_keys].repeat_interleave(group, dim=2).transpose(1, 2) for t in (k, v))  # [B, Hq, n, D]
    qt = q.transpose(1, 2)

    def run():
        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=1 / math.sqrt(q.shape[-1]))
    return run


def cost(q, k, lens, causal):
    B, S = q.shape[:2]
    seen = torch.clamp(lens + S, max=T)
    elem = q.element_size()
    nbytes = 2 * q.numel() * elem + 2 * int(seen.sum()) * HKV * D * elem
    pairs = int(visible_keys(lens, causal, S, T).sum())  # visible (query, key) pairs over the batch
    return nbytes, 4 * D * HQ * pairs


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    use_triton = triton_ready(args.device)
    rows = []
    for B, S, causal, lens in CASES:
        inputs = make_inputs(B, S, causal, lens, args.device)
        nbytes, flops = cost(inputs[0], inputs[1], inputs[3], inputs[4])
        case = {"B": B, "S": S, "causal": causal, "keys": min(lens + S, T)}
        impls = {"torch_ref": lambda inputs=inputs: block_attention_ref(*inputs), "sdpa": sdpa_fn(*inputs)}
        if use_triton:
            impls = {"triton": lambda inputs=inputs: block_attention_triton(*inputs), **impls}
            diff = (block_attention_triton(*inputs).float() - block_attention_ref(*inputs).float()).abs().max()
            case["max_abs_diff_vs_ref"] = float(diff)
        for name, fn in impls.items():
            rows.append(measure(name, fn, args.device, args.reps, case, nbytes, flops))
    notes = {
        "shapes": f"Hq={HQ} Hkv={HKV} D={D} cache T={T} dtype={str(DTYPE).removeprefix('torch.')}",
        "bytes": "q + out + K,V rows visible to each sequence (read once); same count for every impl",
        "flops": "4*D per visible (query, key) pair per query head",
        "sdpa": "F.scaled_dot_product_attention in the input dtype; mask and KV head expansion precomputed",
    }
    if not use_triton:
        notes["triton"] = TRITON_NEEDS_CUDA
    finish(args, "block_attention", rows, notes)


if __name__ == "__main__":
    main()
