"""Decode hot-path ops. Each op has ``<op>_ref`` (plain torch, the specification), ``<op>_triton``
(the Triton kernel) and ``<op>`` (dispatch: the backend is chosen once, see :mod:`kernels.dispatch`)."""

from dgr2.kernels.answer_scores import answer_scores, answer_scores_ref
from dgr2.kernels.block_attention import block_attention, block_attention_ref
from dgr2.kernels.dispatch import backend, use_backend
from dgr2.kernels.unmask_select import unmask_select, unmask_select_ref

__all__ = [
    "answer_scores", "answer_scores_ref", "block_attention", "block_attention_ref",
    "backend", "use_backend", "unmask_select", "unmask_select_ref",
]
