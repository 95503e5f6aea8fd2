"""Kernel tests: each Triton kernel against its ``_ref`` and a float64 ground truth.

``DGR2_TEST_DEVICE=cuda`` runs them compiled on the GPU (larger shapes too, marked ``gpu``); otherwise
they run on CPU tensors through Triton's interpreter and the ``gpu`` shapes skip.
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("DGR2_TEST_DEVICE", "cpu")


# tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton (triton.jit reads it
# when a kernel is decorated), so CPU tensors go through the interpreter.
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("kernel tests on CPU need TRITON_INTERPRET=1 set before triton is imported")


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(scope="session")
def triton(need):
    """The Triton kernels' tests need triton (the test extra): under CI a missing one fails them."""
    return need.module("triton")


def _max_err(x: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest error on the finite entries; NaN/inf must sit exactly where the truth has them."""
    x = x.double()
    finite = torch.isfinite(exact)
    codes = {"nan": 0.0, "posinf": 1.0, "neginf": -1.0}
    assert torch.isfinite(x[finite]).all(), "non-finite values where the truth is finite"
    assert torch.equal(x[~finite].nan_to_num(**codes), exact[~finite].nan_to_num(**codes)), "NaN/inf differ"
    return float((x - exact)[finite].abs().max()) if finite.any() else 0.0


def assert_near_truth(out: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor, scale: float = 1.0,
                      ref_factor: float = 4.0, eps_factor: float = 4.0) -> None:
    """``out`` may be off the float64 truth by a few times the reference's own error, plus a few
    epsilons of the output dtype times ``scale`` (the magnitude the rounding applies to)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, out.dtype, ref.shape, ref.dtype)
    exact = exact.to(out.device)
    err_out, err_ref = _max_err(out, exact), _max_err(ref, exact)
    bound = ref_factor * err_ref + eps_factor * torch.finfo(out.dtype).eps * scale
    assert err_out <= bound, f"error {err_out:.3g} > bound {bound:.3g} (reference error {err_ref:.3g})"


@pytest.fixture
def near_truth():
    return assert_near_truth
