"""block_attention_triton against block_attention_ref and a float64 evaluation of the spec."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch

from kernels.block_attention import block_attention_ref, block_attention_triton, visible_keys

pytest.importorskip("triton")
ON_GPU = os.environ.get("DGR2_TEST_DEVICE", "cpu") != "cpu"  # see conftest.py

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@dataclass(frozen=True)
class Case:
    name: str
    lens: tuple[int, ...]
    causal: tuple[bool, ...]
    S: int
    Hq: int
    Hkv: int
    D: int
    T: int


CASES = [
    Case("ar-step", (0, 5, 37, 63), (True,) * 4, S=1, Hq=4, Hkv=2, D=16, T=64),
    Case("prefill-gqa4", (0, 0, 11), (True,) * 3, S=23, Hq=8, Hkv=2, D=16, T=48),
    Case("denoise-mixed-mha", (0, 17, 50, 71), (True, False, False, True), S=9, Hq=2, Hkv=2, D=16, T=80),
    Case("two-row-tiles", (3, 30), (False, True), S=40, Hq=4, Hkv=2, D=16, T=72),
    Case("head-dim-24", (4, 0), (False, True), S=5, Hq=2, Hkv=1, D=24, T=16),
]
if ON_GPU:  # compiled kernels are fast: add model-sized shapes
    CASES += [
        Case("gpu-decode", (1000, 17, 513, 0, 999, 1, 640, 7), (True,) * 8, S=1, Hq=8, Hkv=4, D=64, T=1024),
        Case("gpu-denoise", (990, 0, 300, 31), (False, True, False, False), S=32, Hq=8, Hkv=4, D=64, T=1024),
        Case("gpu-prefill", (0, 0), (True, True), S=700, Hq=16, Hkv=4, D=128, T=768),
    ]


def attention_f64(q, k, v, lens, causal):
    """The spec evaluated naively in float64 (GQA by repeating KV heads)."""
    B, S, Hq, D = q.shape
    group = Hq // k.shape[2]
    k, v = (t.double().repeat_interleave(group, dim=2) for t in (k, v))  # [B, T, Hq, D]
    scores = torch.einsum("bshd,bthd->bhst", q.double(), k) / math.sqrt(D)
    scores = scores.masked_fill(~visible_keys(lens, causal, S, k.shape[1])[:, None], float("-inf"))
    return torch.einsum("bhst,bthd->bshd", scores.softmax(-1), v)


def make_inputs(case: Case, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(case.lens)
    q = torch.randn(B, case.S, case.Hq, case.D, generator=g)
    k = torch.randn(B, case.T, case.Hkv, case.D, generator=g)
    v = torch.randn(B, case.T, case.Hkv, case.D, generator=g)
    lens = torch.tensor(case.lens, dtype=torch.int64)
    causal = torch.tensor(case.causal)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)] + [lens.to(device), causal.to(device)]


def check(q, k, v, lens, causal, near_truth, exact_inputs=None):
    out = block_attention_triton(q, k, v, lens, causal)
    ref = block_attention_ref(q, k, v, lens, causal)
    exact = attention_f64(*(exact_inputs or (q, k, v)), lens, causal)
    near_truth(out, ref, exact, scale=float(v.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_reference(case, dtype, device, near_truth):
    check(*make_inputs(case, dtype, device), near_truth)


def test_non_contiguous_query_and_mixed_dtypes(device, near_truth):
    case = CASES[2]
    q, k, v, lens, causal = make_inputs(case, torch.float32, device)
    q_wide = torch.randn(q.shape[0], q.shape[2], q.shape[1], 2 * q.shape[3], device=device)
    q_view = q_wide[..., ::2].transpose(1, 2)  # [B, S, Hq, D] with no unit stride anywhere
    check(q_view, k, v, lens, causal, near_truth)
    check(q.half(), k, v, lens, causal, near_truth)  # fp16 queries on an fp32 cache (fp32 path)


def test_stale_cache_entries_are_never_read(device):
    """Entries at or past lens[b] + S are scratch (model.kv_cache): NaN there must not leak in."""
    case = CASES[2]
    q, k, v, lens, causal = make_inputs(case, torch.float32, device)
    clean = block_attention_triton(q, k, v, lens, causal)
    stale = torch.arange(case.T, device=device)[None, :] >= (lens + case.S)[:, None]  # [B, T]
    k, v = (t.masked_fill(stale[:, :, None, None], float("nan")) for t in (k, v))
    torch.testing.assert_close(block_attention_triton(q, k, v, lens, causal), clean, rtol=0, atol=0)
