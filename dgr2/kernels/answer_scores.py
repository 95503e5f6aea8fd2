"""Answer scoring for the validity guard.

Spec (``answer_scores_ref``): from logits ``[B, N, V]`` gather the columns of the slot tokens
``slot_ids [Kmax]`` (``<c1>..<cKmax>``) and log-normalise over each request's own ``num_slots[b]``
slots. Returns ``[B, N, Kmax]`` fp32 log-probabilities, ``-inf`` for slots beyond ``num_slots[b]``.
Rows of the answer positions form the guard's K x K (rank position x slot) matrix.
"""

from __future__ import annotations

import torch

from dgr2.kernels.dispatch import backend

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU service runs on the torch references only
    triton = None


def answer_scores_ref(logits: torch.Tensor, slot_ids: torch.Tensor, num_slots: torch.Tensor) -> torch.Tensor:
    picked = logits.float().index_select(-1, slot_ids)  # [B, N, Kmax]
    valid = torch.arange(slot_ids.numel(), device=logits.device)[None, :] < num_slots[:, None]  # [B, Kmax]
    picked = picked.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.log_softmax(picked, dim=-1)


if triton is not None:

    @triton.jit
    def _answer_scores_kernel(
        logits_ptr, ids_ptr, nslots_ptr, out_ptr, N, K, s_b, s_n, s_v,
        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # One program: BLOCK_R rows (positions n) of one request b; gather, mask, log-softmax.
        b = tl.program_id(0).to(tl.int64)
        rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [R]
        k = tl.arange(0, BLOCK_K)  # [K]
        ids = tl.load(ids_ptr + k, mask=k < K, other=0)
        valid = k < tl.minimum(tl.load(nslots_ptr + b), K)
        row_ok = rows[:, None] < N
        ptrs = logits_ptr + b * s_b + rows[:, None].to(tl.int64) * s_n + ids[None, :] * s_v
        x = tl.load(ptrs, mask=row_ok & valid[None, :], other=0.0).to(tl.float32)  # [R, K]
        x = tl.where(valid[None, :], x, -float("inf"))  # padding rows stay finite: no NaN to discard
        # Same arithmetic as torch's log_softmax: x - max - log(sum(exp(x - max))); a request with
        # no valid slot gets NaN rows, like the reference.
        shifted = x - tl.max(x, axis=1)[:, None]
        out = shifted - tl.log(tl.sum(tl.exp(shifted), axis=1))[:, None]
        tl.store(out_ptr + (b * N + rows[:, None]) * K + k[None, :], out, mask=row_ok & (k[None, :] < K))


def answer_scores_triton(
    logits: torch.Tensor, slot_ids: torch.Tensor, num_slots: torch.Tensor,
) -> torch.Tensor:
    """One launch: gather + mask + log-softmax; reads only the B*N*Kmax slot logits."""
    if triton is None:
        raise RuntimeError("answer_scores_triton needs the triton package (use the torch backend)")
    B, N, _ = logits.shape
    K = slot_ids.numel()
    out = torch.empty((B, N, K), device=logits.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    block_k = triton.next_power_of_2(K)
    block_r = max(1, min(triton.next_power_of_2(N), 4096 // block_k, 64))
    grid = (B, triton.cdiv(N, block_r))
    _answer_scores_kernel[grid](
        logits, slot_ids, num_slots, out, N, K, *logits.stride(), BLOCK_R=block_r, BLOCK_K=block_k,
    )
    return out


def answer_scores(logits: torch.Tensor, slot_ids: torch.Tensor, num_slots: torch.Tensor) -> torch.Tensor:
    if backend() == "triton":
        return answer_scores_triton(logits, slot_ids, num_slots)
    return answer_scores_ref(logits, slot_ids, num_slots)
