"""Dispatch: each op follows use_backend(); the package imports and falls back without triton."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from dgr2 import kernels

OPS = [("block_attention", 5), ("unmask_select", 3), ("answer_scores", 3)]  # (name, number of args)


@pytest.mark.parametrize("name, n_args", OPS, ids=[o[0] for o in OPS])
def test_use_backend_routes_each_op(name, n_args, monkeypatch):
    # the package attribute is the dispatching function (it shadows the submodule of the same name)
    op, module = getattr(kernels, name), importlib.import_module(f"dgr2.kernels.{name}")
    calls = []
    for impl in ("ref", "triton"):
        monkeypatch.setattr(module, f"{name}_{impl}", lambda *a, impl=impl: calls.append(impl))
    before = kernels.backend()
    with kernels.use_backend("torch"):
        op(*[None] * n_args)
        with kernels.use_backend("triton"):
            op(*[None] * n_args)
        op(*[None] * n_args)
    assert calls == ["ref", "triton", "ref"]
    assert kernels.backend() == before


def test_imports_and_falls_back_without_triton():
    code = """
import sys
sys.modules["triton"] = None  # as if not installed
import torch
from dgr2 import kernels
from dgr2.kernels.unmask_select import unmask_select_triton
assert kernels.backend() == "torch"
logits, masked = torch.randn(1, 2, 5), torch.ones(1, 2, dtype=torch.bool)
kernels.unmask_select(logits, masked, 0.5)
try:
    unmask_select_triton(logits, masked, 0.5)
except RuntimeError as e:
    assert "triton" in str(e)
else:
    raise AssertionError("no RuntimeError without triton")
"""
    env = {k: v for k, v in os.environ.items() if k != "DGR2_KERNELS"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root, timeout=120)
