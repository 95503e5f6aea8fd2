"""block_attention_triton against block_attention_ref and a float64 evaluation of the spec."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from dgr2.kernels.block_attention import block_attention_ref, block_attention_triton, visible_keys

pytestmark = pytest.mark.usefixtures("triton")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@dataclass(frozen=True)
class Case:
    name: str
    lens: tuple[int, ...]
    causal: tuple[bool, ...] | tuple[int, ...]  # bools, or causal prefix lengths
    S: int
    Hq: int
    Hkv: int
    D: int
    T: int
    visible: tuple[int, ...] | None = None


CASES = [
    Case("ar-step", (0, 5, 37, 63), (True,) * 4, S=1, Hq=4, Hkv=2, D=16, T=64),
    Case("prefill-gqa4", (0, 0, 11), (True,) * 3, S=23, Hq=8, Hkv=2, D=16, T=48),
    Case("denoise-mixed-mha", (0, 17, 50, 71), (True, False, False, True), S=9, Hq=2, Hkv=2, D=16, T=80),
    Case("two-row-tiles", (3, 30), (False, True), S=40, Hq=4, Hkv=2, D=16, T=72),
    Case("head-dim-24", (4, 0), (False, True), S=5, Hq=2, Hkv=1, D=24, T=16),
    # fused commit + denoise (causal half, then a half that sees both), a row that only denoises its
    # first half, a row that only commits
    Case("fused-commit", (0, 9, 30), (8, 0, 16), S=16, Hq=4, Hkv=2, D=16, T=48, visible=(16, 8, 16)),
    Case("fused-two-row-tiles", (3, 21), (20, 0), S=40, Hq=4, Hkv=2, D=16, T=64, visible=(40, 20)),
    # layouts where every query sees every key, which the reference runs unmasked: one length,
    # denoising (and AR) steps; a batch-1 commit still needs its mask
    Case("one-length-denoise", (21, 21), (False, False), S=9, Hq=4, Hkv=2, D=16, T=40),
    Case("batch1-ar-step", (37,), (True,), S=1, Hq=4, Hkv=2, D=16, T=40),
    Case("batch1-commit", (12,), (True,), S=8, Hq=4, Hkv=2, D=16, T=24),
]
GPU_CASES = [  # compiled kernels are fast: model-sized shapes, on the GPU only (gpu marker)
    Case("gpu-decode", (1000, 17, 513, 0, 999, 1, 640, 7), (True,) * 8, S=1, Hq=8, Hkv=4, D=64, T=1024),
    Case("gpu-denoise", (990, 0, 300, 31), (False, True, False, False), S=32, Hq=8, Hkv=4, D=64, T=1024),
    Case("gpu-prefill", (0, 0), (True, True), S=700, Hq=16, Hkv=4, D=128, T=768),
    Case("gpu-fused", (900, 0, 300), (32, 0, 32), S=64, Hq=8, Hkv=4, D=64, T=1024, visible=(64, 32, 64)),
]


def attention_f64(q, k, v, lens, causal, visible=None):
    """The spec evaluated naively in float64 (GQA by repeating KV heads)."""
    B, S, Hq, D = q.shape
    group = Hq // k.shape[2]
    k, v = (t.double().repeat_interleave(group, dim=2) for t in (k, v))  # [B, T, Hq, D]
    scores = torch.einsum("bshd,bthd->bhst", q.double(), k) / math.sqrt(D)
    scores = scores.masked_fill(~visible_keys(lens, causal, S, k.shape[1], visible)[:, None], float("-inf"))
    return torch.einsum("bhst,bthd->bshd", scores.softmax(-1), v)


def make_inputs(case: Case, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(case.lens)
    q = torch.randn(B, case.S, case.Hq, case.D, generator=g)
    k = torch.randn(B, case.T, case.Hkv, case.D, generator=g)
    v = torch.randn(B, case.T, case.Hkv, case.D, generator=g)
    lens = torch.tensor(case.lens, dtype=torch.int64)
    causal = torch.tensor(case.causal)
    visible = None if case.visible is None else torch.tensor(case.visible, device=device)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)] + [lens.to(device), causal.to(device), visible]


def check(q, k, v, lens, causal, visible, near_truth, exact_inputs=None):
    out = block_attention_triton(q, k, v, lens, causal, visible)
    ref = block_attention_ref(q, k, v, lens, causal, visible)
    exact = attention_f64(*(exact_inputs or (q, k, v)), lens, causal, visible)
    near_truth(out, ref, exact, scale=float(v.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES + [pytest.param(c, marks=pytest.mark.gpu) for c in GPU_CASES],
                         ids=lambda c: c.name)
def test_matches_reference(case, dtype, device, near_truth):
    check(*make_inputs(case, dtype, device), near_truth)


def test_bool_and_length_forms_of_causal_agree():
    """``causal`` True / False is the causal-prefix length S / 0 with the whole block visible."""
    lens = torch.tensor([0, 4, 9])
    as_bool = visible_keys(lens, torch.tensor([True, False, True]), 6, 20)
    as_len = visible_keys(lens, torch.tensor([6, 0, 6]), 6, 20, torch.tensor([6, 6, 6]))
    assert torch.equal(as_bool, as_len)
    fused = visible_keys(lens[:1], torch.tensor([3]), 6, 8, torch.tensor([6]))[0]  # [S, keys]
    assert fused[:3, :6].tolist() == [[i >= j for j in range(6)] for i in range(3)]  # causal half
    assert fused[3:, :6].all() and not fused[:, 6:].any()  # masked half sees the whole block


def test_non_contiguous_query_and_mixed_dtypes(device, near_truth):
    case = CASES[2]
    q, k, v, lens, causal, visible = make_inputs(case, torch.float32, device)
    q_wide = torch.randn(q.shape[0], q.shape[2], q.shape[1], 2 * q.shape[3], device=device)
    q_view = q_wide[..., ::2].transpose(1, 2)  # [B, S, Hq, D] with no unit stride anywhere
    check(q_view, k, v, lens, causal, visible, near_truth)
    check(q.half(), k, v, lens, causal, visible, near_truth)  # fp16 queries on an fp32 cache (fp32 path)


def test_stale_cache_entries_are_never_read(device):
    """Entries at or past lens[b] + S are scratch (model.kv_cache): NaN there must not leak in."""
    case = CASES[2]
    q, k, v, lens, causal, _ = make_inputs(case, torch.float32, device)
    clean = block_attention_triton(q, k, v, lens, causal)
    stale = torch.arange(case.T, device=device)[None, :] >= (lens + case.S)[:, None]  # [B, T]
    k, v = (t.masked_fill(stale[:, :, None, None], float("nan")) for t in (k, v))
    torch.testing.assert_close(block_attention_triton(q, k, v, lens, causal), clean, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["one-length-denoise", "batch1-ar-step"])
def test_unmasked_reference_reads_no_stale_entries(name):
    """The reference's unmasked layouts read keys up to lens + S only: NaN past them must not leak in."""
    case = next(c for c in CASES if c.name == name)
    q, k, v, lens, causal, _ = make_inputs(case, torch.float32, "cpu")
    clean = block_attention_ref(q, k, v, lens, causal)
    torch.testing.assert_close(clean, attention_f64(q, k, v, lens, causal).float(), rtol=1e-4, atol=1e-5)
    k[:, case.lens[0] + case.S:] = float("nan")
    v[:, case.lens[0] + case.S:] = float("nan")
    torch.testing.assert_close(block_attention_ref(q, k, v, lens, causal), clean, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["denoise-mixed-mha", "fused-commit", "two-row-tiles", "one-length-denoise"])
def test_a_subset_of_queries_gives_the_same_rows_as_the_whole_block(name, device, near_truth):
    """``q_index``: computing some block positions (in any order, one repeated as padding) gives the
    rows the whole block gives at those positions, from the same cache."""
    case = next(c for c in CASES if c.name == name)
    q, k, v, lens, causal, visible = make_inputs(case, torch.float32, device)
    g = torch.Generator().manual_seed(1)
    R = max(1, case.S // 2)
    q_index = torch.stack([torch.randperm(case.S, generator=g)[:R] for _ in case.lens]).to(device)
    q_index[:, -1] = q_index[:, 0]  # padding repeats a position
    q_sub = q.gather(1, q_index[:, :, None, None].expand(-1, -1, case.Hq, case.D))
    rows = q_index[:, :, None, None].expand(-1, -1, case.Hq, case.D)
    exact = attention_f64(q, k, v, lens, causal, visible).gather(1, rows.to("cpu"))
    ref = block_attention_ref(q_sub, k, v, lens, causal, visible, q_index=q_index, block_len=case.S)
    torch.testing.assert_close(ref, block_attention_ref(q, k, v, lens, causal, visible).gather(1, rows))
    out = block_attention_triton(q_sub, k, v, lens, causal, visible, q_index=q_index, block_len=case.S)
    near_truth(out, ref, exact, scale=float(v.abs().max()))
