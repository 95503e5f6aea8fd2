"""Kernel tests: each Triton kernel against its ``_ref`` and a float64 ground truth.

``DGR2_TEST_DEVICE=cuda`` runs them compiled on the GPU (larger shapes too); otherwise they run on
CPU tensors through Triton's interpreter, which ``triton.jit`` picks at decoration time, hence the
environment is set here, before the kernel modules are (re)imported.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

DEVICE = os.environ.get("DGR2_TEST_DEVICE", "cpu")
KERNEL_MODULES = ("kernels.block_attention", "kernels.unmask_select", "kernels.answer_scores")


def _reimport_triton_interpreted() -> None:
    """tests/conftest.py imports the model, hence kernels and triton, before this file runs, and
    triton decorates its own library functions (tl.sum, ...) for the GPU at import. Drop triton's
    Python modules (its compiled ``triton._C`` cannot load twice and is mode-independent) and
    re-import the kernel modules, so that triton and our kernels come back interpreted.
    Setting TRITON_INTERPRET=1 at the top of tests/conftest.py would make this a no-op."""
    for name in [m for m in sys.modules if m.split(".")[0] == "triton" and not m.startswith("triton._C")]:
        del sys.modules[name]
    for name in KERNEL_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])


if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    os.environ["TRITON_INTERPRET"] = "1"  # harmless elsewhere: CPU tensors can only be interpreted
    if "triton" in sys.modules:
        _reimport_triton_interpreted()

ON_GPU = DEVICE != "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


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
