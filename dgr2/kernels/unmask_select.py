"""Unmask selection for block diffusion: which masked positions to commit this step.

Spec (``unmask_select_ref``): for logits ``[B, S, V]`` and ``masked [B, S]``, take per position the
argmax token and its softmax probability (``conf``); unmask every masked position with
``conf > threshold``; a sequence that still has masked positions but none above the threshold
unmasks its single most confident one (so every step makes progress, and a threshold above 1 means
exactly one token per step). Returns ``(tokens [B,S] int64, conf [B,S] fp32, unmask [B,S] bool)``.
"""

from __future__ import annotations

import torch

from dgr2.kernels.dispatch import backend

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU service runs on the torch references only
    triton = None


def unmask_select_ref(logits: torch.Tensor, masked: torch.Tensor, threshold: float):
    probs = torch.softmax(logits.float(), dim=-1)
    conf, tokens = probs.max(dim=-1)
    return tokens, conf, threshold_rule(conf, masked, threshold)


def threshold_rule(conf: torch.Tensor, masked: torch.Tensor, threshold: float) -> torch.Tensor:
    above = masked & (conf > threshold)
    best = conf.masked_fill(~masked, -1.0).argmax(dim=-1)  # [B]
    needs_one = masked.any(dim=-1) & ~above.any(dim=-1)
    forced = torch.zeros_like(masked)
    forced[torch.arange(masked.shape[0], device=masked.device), best] = True
    return above | (forced & needs_one[:, None])


if triton is not None:

    @triton.jit
    def _argmax_prob_kernel(logits_ptr, tok_ptr, conf_ptr, S, V, s_b, s_s, s_v, BLOCK_V: tl.constexpr):
        # One program per (b, s) row: a single pass over the vocabulary keeping the running max,
        # the running sum of exp(x - max) and the (first) index of the max. conf = 1 / sum.
        row = tl.program_id(0)
        base = logits_ptr + (row // S).to(tl.int64) * s_b + (row % S).to(tl.int64) * s_s
        m = -float("inf")
        total = 0.0
        best = 0
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            x = tl.load(base + cols * s_v, mask=cols < V, other=-float("inf")).to(tl.float32)
            x_max = tl.max(x, axis=0)
            m_new = tl.maximum(m, x_max)
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # rows starting with -inf logits
            total = total * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
            best = tl.where(x_max > m, v0 + tl.argmax(x, axis=0, tie_break_left=True), best)  # ties: earlier
            m = m_new
        tl.store(tok_ptr + row, best.to(tl.int64))
        tl.store(conf_ptr + row, 1.0 / total)

    @triton.jit
    def threshold_rule_kernel(conf_ptr, masked_ptr, unmask_ptr, S, threshold, BLOCK_S: tl.constexpr):
        # One program per sequence: the rule of threshold_rule on its S positions, on device.
        b = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_S)
        ok = offs < S
        conf = tl.load(conf_ptr + b * S + offs, mask=ok, other=0.0)
        masked = (tl.load(masked_ptr + b * S + offs, mask=ok, other=0) != 0) & ok
        above = masked & (conf > threshold)
        # -1 like the reference for unmasked positions, -2 so padding never wins.
        best = tl.argmax(tl.where(masked, conf, tl.where(ok, -1.0, -2.0)), axis=0, tie_break_left=True)
        needs_one = (tl.max(masked.to(tl.int32), axis=0) > 0) & (tl.max(above.to(tl.int32), axis=0) == 0)
        unmask = above | ((offs == best) & needs_one)
        tl.store(unmask_ptr + b * S + offs, unmask.to(tl.int8), mask=ok)


def unmask_select_triton(logits: torch.Tensor, masked: torch.Tensor, threshold: float):
    """Two launches, no host sync: per-row online softmax/argmax, then the per-sequence rule."""
    if triton is None:
        raise RuntimeError("unmask_select_triton needs the triton package (use the torch backend)")
    B, S, V = logits.shape
    tokens = torch.empty((B, S), device=logits.device, dtype=torch.int64)
    conf = torch.empty((B, S), device=logits.device, dtype=torch.float32)
    unmask = torch.empty((B, S), device=logits.device, dtype=torch.bool)
    if B * S == 0:
        return tokens, conf, unmask
    block_v = min(triton.next_power_of_2(V), 4096)
    _argmax_prob_kernel[(B * S,)](
        logits, tokens, conf, S, V, *logits.stride(), BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4,
    )
    masked8 = masked.contiguous().view(torch.int8)  # bool and int8 share a layout
    threshold_rule_kernel[(B,)](
        conf, masked8, unmask.view(torch.int8), S, float(threshold), BLOCK_S=triton.next_power_of_2(S),
    )
    return tokens, conf, unmask


def unmask_select(logits: torch.Tensor, masked: torch.Tensor, threshold: float):
    if backend() == "triton":
        return unmask_select_triton(logits, masked, threshold)
    return unmask_select_ref(logits, masked, threshold)
