"""answer_scores_triton against answer_scores_ref and a float64 log-softmax."""

from __future__ import annotations

import pytest
import torch

from dgr2.kernels.answer_scores import answer_scores_ref, answer_scores_triton

pytestmark = pytest.mark.usefixtures("triton")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, N, V, Kmax, num_slots): K=1, K=100, V not a power of two, num_slots > Kmax, N over several row tiles
CASES = [
    (3, 7, 1000, 100, (100, 1, 37)),
    (2, 5, 257, 1, (1, 1)),
    (2, 130, 300, 3, (3, 5)),
    (1, 1, 1000, 20, (20,)),
]
CASES += [pytest.param((32, 100, 50257, 100, tuple(range(69, 101))), marks=pytest.mark.gpu)]  # model-sized


def answer_scores_f64(logits, slot_ids, num_slots):
    picked = logits.double()[..., slot_ids]  # [B, N, Kmax]
    valid = torch.arange(slot_ids.numel(), device=logits.device)[None, :] < num_slots[:, None]
    return picked.masked_fill(~valid[:, None, :], float("-inf")).log_softmax(-1)


def make_inputs(B, N, V, K, num_slots, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, N, V, generator=g)).to(device=device, dtype=dtype)
    slot_ids = torch.randperm(V, generator=g)[:K].to(device)  # unsorted columns
    return logits, slot_ids, torch.tensor(num_slots, device=device)


def check(logits, slot_ids, num_slots, near_truth):
    out = answer_scores_triton(logits, slot_ids, num_slots)
    ref = answer_scores_ref(logits, slot_ids, num_slots)
    exact = answer_scores_f64(logits, slot_ids, num_slots)
    near_truth(out, ref, exact, scale=float(exact[exact.isfinite()].abs().max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_matches_reference(case, dtype, device, near_truth):
    check(*make_inputs(*case, dtype, device), near_truth)


def test_non_contiguous_logits(device, near_truth):
    logits, slot_ids, num_slots = make_inputs(2, 12, 1000, 100, (100, 7), torch.float32, device)
    check(logits[:, ::2], slot_ids, num_slots, near_truth)  # e.g. every other position of a block


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
def test_request_without_slots_gives_nan_like_the_reference(device):
    """num_slots[b] = 0: log_softmax over nothing. The spec (reference) gives NaN rows; so do we."""
    logits, slot_ids, num_slots = make_inputs(2, 3, 257, 4, (0, 4), torch.float32, device)
    out = answer_scores_triton(logits, slot_ids, num_slots)
    assert out[0].isnan().all() and answer_scores_ref(logits, slot_ids, num_slots)[0].isnan().all()
    assert out[1].isfinite().all()
