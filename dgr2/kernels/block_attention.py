"""Block attention: a block of queries against each sequence's committed KV cache plus the block.

Spec (``block_attention_ref``):
  q        [B, S, Hq, D]   the block's queries; the block sits at positions [lens[b], lens[b]+S)
  k_cache  [B, T, Hkv, D]  with the block's own keys already written at those positions
  v_cache  [B, T, Hkv, D]
  lens     [B] int64       committed length of each sequence before the block
  causal   [B] bool        True: causal inside the block (prefill, commit, AR step with S=1);
                           False: bidirectional inside the block (a denoising step);
           or [B] int      how many leading block positions attend causally (0 .. S)
  visible  [B] int | None  block keys that the other (non-causal) positions see: the first
                           visible[b] of the block (default S, the whole block)
  q_index  [B, R] int64 | None  the block position of each query when only some positions are
                           computed (the others' keys and values stay in the cache from an
                           earlier pass); the block is then ``block_len`` wide. Default: query i
                           is block position i (R = S = block_len).
Key j is visible to the query at block position i of sequence b iff j < lens[b], or, with
r = j - lens[b] in [0, S): r <= i when i < causal[b], else r < visible[b]. A fused commit + denoise pass of the
block-diffusion decoder is causal = S/2, visible = S (the clean half causal, the masked half
seeing both); a row that only denoises in such a pass is causal = 0, visible = S/2.
GQA: query head h reads KV head h // (Hq // Hkv).
Returns [B, R, Hq, D] in q's dtype; softmax in fp32 with scale 1/sqrt(D).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dgr2.kernels.dispatch import backend

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU service runs on the torch references only
    triton = None


def block_layout(causal: torch.Tensor, visible: torch.Tensor | None,
                 block_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(causal_len, visible_len)`` as int32 ``[B]`` from either form of ``causal`` (see the spec)."""
    causal_len = causal.to(torch.int32) * block_len if causal.dtype == torch.bool else causal.to(torch.int32)
    if visible is None:
        visible = torch.full_like(causal_len, block_len)
    return causal_len, visible.to(torch.int32)


def visible_keys(lens: torch.Tensor, causal: torch.Tensor, block_len: int, n_keys: int,
                 visible: torch.Tensor | None = None, q_index: torch.Tensor | None = None) -> torch.Tensor:
    """The visibility rule above as a boolean mask ``[B, R, n_keys]``."""
    causal_len, visible_len = block_layout(causal, visible, block_len)
    j = torch.arange(n_keys, device=lens.device)[None, None, :]
    i = torch.arange(block_len, device=lens.device)[None, :, None] if q_index is None else q_index[:, :, None]
    start = lens[:, None, None]
    r = j - start
    rule = torch.where(i < causal_len[:, None, None], r <= i, r < visible_len[:, None, None])
    return (j < start) | ((r < block_len) & rule)


class RefLayout(NamedTuple):
    """What the torch reference needs beyond the tensors: how many cache keys to read, and the mask."""

    n_keys: int
    mask: torch.Tensor | None  # [B, 1, S, n_keys]; None when every query sees every key


def ref_layout(lens: torch.Tensor, causal: torch.Tensor, visible: torch.Tensor | None, block_len: int,
               capacity: int, q_index: torch.Tensor | None = None) -> RefLayout:
    causal_len, visible_len = block_layout(causal, visible, block_len)
    # one host sync for both the key count and whether the layout needs a mask at all
    longest, shortest, sees_all = torch.stack([
        lens.max(), lens.min(), ((causal_len == 0) | (block_len == 1)).all() & (visible_len == block_len).all()
    ]).tolist()
    n_keys = min(longest + block_len, capacity)
    # Every query seeing every key (one length, a denoising step or an AR step): SDPA unmasked, which
    # on CPU takes its fused kernel instead of the masked path (batch 1 decodes, docs/design.md)
    if bool(sees_all) and longest == shortest and n_keys == longest + block_len:
        return RefLayout(n_keys, None)
    return RefLayout(n_keys, visible_keys(lens, causal_len, block_len, n_keys, visible_len, q_index)[:, None])


class BlockPlan(NamedTuple):
    """The block-attention arguments of one forward pass, worked out once for all its layers."""

    lens: torch.Tensor
    causal: torch.Tensor
    visible: torch.Tensor | None
    ref: RefLayout | None  # the torch reference's layout (None under the Triton backend, which needs none)
    q_index: torch.Tensor | None = None  # [B, R]: the block positions computed, when not all of them
    block_len: int | None = None  # the block's width when q_index is given


def plan_block_attention(lens: torch.Tensor, causal: torch.Tensor, visible: torch.Tensor | None, block_len: int,
                         capacity: int, q_index: torch.Tensor | None = None) -> BlockPlan:
    ref = None if backend() == "triton" else ref_layout(lens, causal, visible, block_len, capacity, q_index)
    return BlockPlan(lens, causal, visible, ref, q_index, block_len if q_index is not None else None)


def block_attention_ref(q, k_cache, v_cache, lens, causal, visible=None, layout: RefLayout | None = None,
                        q_index: torch.Tensor | None = None, block_len: int | None = None):
    B, S, Hq, D = q.shape
    width = S if q_index is None else block_len
    n_keys, mask = layout or ref_layout(lens, causal, visible, width, k_cache.shape[1], q_index)
    k = k_cache[:, :n_keys].transpose(1, 2)  # [B, Hkv, T, D]
    v = v_cache[:, :n_keys].transpose(1, 2)
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation; fp64 stays fp64 (tests)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2).to(acc), k.to(acc), v.to(acc), attn_mask=mask,
        scale=1.0 / math.sqrt(D), enable_gqa=Hq != k.shape[1],
    )
    return out.transpose(1, 2).to(q.dtype)


if triton is not None:

    @triton.jit
    def _block_attention_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, lens_ptr, causal_ptr, visible_ptr, qi_ptr,
        sq_b, sq_s, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d, sv_b, sv_t, sv_h, sv_d, so_b, so_s, so_h, so_d, sqi_b,
        R, T, D, qk_scale,
        GROUP: tl.constexpr, HKV: tl.constexpr, DOT_FP32: tl.constexpr, HAS_QIDX: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # One program: BLOCK_M rows of (query r, query head of the group) for one (b, kv head),
        # so the KV tiles are read once for all GROUP query heads that share them (GQA).
        pid_m = tl.program_id(0)
        b = (tl.program_id(1) // HKV).to(tl.int64)
        hk = tl.program_id(1) % HKV
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [M] = r * GROUP + g
        r_q = rows // GROUP
        head = hk * GROUP + rows % GROUP
        row_ok = r_q < R
        if HAS_QIDX:  # noqa: SIM108 (a constexpr branch)  query r sits at block position q_index[b, r]
            i = tl.load(qi_ptr + b * sqi_b + r_q, mask=row_ok, other=0)
        else:
            i = r_q
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D

        start = tl.load(lens_ptr + b)  # the block sits at [start, start + S)
        n_causal = tl.load(causal_ptr + b)  # block positions i < n_causal attend causally,
        n_visible = tl.load(visible_ptr + b)  # the others to the block's first n_visible keys
        # Keys beyond the tile rows' horizon are never visible: stop the loop there.
        extent = tl.where(row_ok, tl.where(i < n_causal, i + 1, n_visible), 0)
        hi = tl.minimum(start + tl.max(extent, axis=0), T)

        q_off = b * sq_b + r_q[:, None] * sq_s + head[:, None] * sq_h + d[None, :] * sq_d
        q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [M, Dp]
        if DOT_FP32:
            q = q.to(tl.float32)

        # Finite start value: a fully masked tile then gives p = 0, alpha = 1 instead of NaN.
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        k_base = k_ptr + b * sk_b + hk * sk_h
        v_base = v_ptr + b * sv_b + hk * sv_h
        for j0 in range(0, hi, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)  # [N]
            j_ok = j < hi
            kv_mask = j_ok[:, None] & d_ok[None, :]
            k = tl.load(k_base + j[:, None] * sk_t + d[None, :] * sk_d, mask=kv_mask, other=0.0)  # [N, Dp]
            v = tl.load(v_base + j[:, None] * sv_t + d[None, :] * sv_d, mask=kv_mask, other=0.0)
            if DOT_FP32:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))  # [M, N] fp32 accumulation
            r = j[None, :] - start
            in_block_ok = tl.where(i[:, None] < n_causal, r <= i[:, None], r < n_visible)
            visible = j_ok[None, :] & ((j[None, :] < start) | in_block_ok)
            s = tl.where(visible, s * qk_scale, float("-inf"))  # log2 domain
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if DOT_FP32:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new

        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l_i = 0 only on padding rows
        o_off = b * so_b + r_q[:, None] * so_s + head[:, None] * so_h + d[None, :] * so_d
        tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def _pow2_at_least(n: int, floor: int) -> int:
    return max(floor, 1 << max(0, n - 1).bit_length())


def block_attention_triton(q, k_cache, v_cache, lens, causal, visible=None, q_index=None, block_len=None):
    """Flash-attention style kernel for :func:`block_attention_ref`: one program per (tile of query rows,
    sequence, KV head), keys read in tiles up to ``lens[b] + S`` only; no host sync."""
    if triton is None:
        raise RuntimeError("block_attention_triton needs the triton package (use the torch backend)")
    B, R, Hq, D = q.shape
    S = R if q_index is None else block_len
    T, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    out = torch.empty((B, R, Hq, D), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    # tl.dot wants every dim >= 16; 16-bit inputs of one dtype go to the tensor cores as they are,
    # anything else (fp32, mixed dtypes) is computed in exact fp32 to match the reference.
    same16 = q.dtype in (torch.float16, torch.bfloat16) and k_cache.dtype == v_cache.dtype == q.dtype
    # Triton's CPU interpreter (3.9) multiplies the raw bits of bf16 in tl.dot: upcast there instead.
    same16 &= not (q.device.type == "cpu" and q.dtype == torch.bfloat16)
    block_m = _pow2_at_least(min(R * group, 64), 16)  # rows = R * group (query, head in group)
    block_d = _pow2_at_least(D, 16)  # D padded with masks
    block_n = 64 if same16 else 32  # fp32 K/V tiles are twice as big: keep the pipelined copies in shared memory
    grid = (triton.cdiv(R * group, block_m), B * Hkv)
    causal_len, visible_len = block_layout(causal, visible, S)
    qi = lens if q_index is None else q_index  # an unused pointer when every position is a query
    _block_attention_kernel[grid](
        q, k_cache, v_cache, out, lens, causal_len, visible_len, qi,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(), qi.stride(0),
        R, T, D, 1.4426950408889634 / math.sqrt(D),  # scale folded with log2(e) for exp2
        GROUP=group, HKV=Hkv, DOT_FP32=not same16, HAS_QIDX=q_index is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4,
    )
    return out


def block_attention(q, k_cache, v_cache, lens, causal, visible=None, layout: RefLayout | None = None,
                    q_index: torch.Tensor | None = None, block_len: int | None = None):
    """``layout``: the reference's :class:`RefLayout` when the caller worked it out already
    (:func:`plan_block_attention`, once per forward pass instead of once per layer)."""
    if backend() == "triton":
        return block_attention_triton(q, k_cache, v_cache, lens, causal, visible, q_index, block_len)
    return block_attention_ref(q, k_cache, v_cache, lens, causal, visible, layout, q_index, block_len)
