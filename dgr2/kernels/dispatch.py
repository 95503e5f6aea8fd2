"""Chooses the kernel backend once per process and logs the choice.

``DGR2_KERNELS=triton`` forces the Triton kernels (on CPU tensors this needs ``TRITON_INTERPRET=1``),
``DGR2_KERNELS=torch`` forces the references, ``auto`` (default) takes Triton when CUDA and Triton
are both present. Tests switch with :func:`use_backend`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator

log = logging.getLogger("dgr2.kernels")
_choice: str | None = None


def _decide() -> str:
    wanted = os.environ.get("DGR2_KERNELS", "auto").lower()
    if wanted not in ("auto", "triton", "torch"):
        raise ValueError(f"DGR2_KERNELS must be auto, triton or torch, not {wanted!r}")
    has_triton = importlib.util.find_spec("triton") is not None
    if wanted == "triton":
        if not has_triton:
            raise RuntimeError("DGR2_KERNELS=triton but the triton package is not installed")
        return "triton"
    if wanted == "torch":
        return "torch"
    import torch

    return "triton" if has_triton and torch.cuda.is_available() else "torch"


def backend() -> str:
    """The backend in force: ``"triton"`` or ``"torch"`` (decided on first use, then fixed)."""
    global _choice
    if _choice is None:
        _choice = _decide()
        log.info("kernel backend: %s (DGR2_KERNELS=%s)", _choice, os.environ.get("DGR2_KERNELS", "auto"))
    return _choice


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily force a backend (tests and benchmarks)."""
    global _choice
    if name not in ("triton", "torch"):
        raise ValueError(name)
    old, _choice = _choice, name
    try:
        yield
    finally:
        _choice = old
