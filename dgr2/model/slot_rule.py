"""The slot rule: which candidate slots an output position may name. Training and both decoders apply it.

The completion has two sections, the trace and the answer (everything after ``<answer>``). A position
may name a slot of its request only while its own section has named that slot fewer times than the
section allows: ``TRACE_SLOT_USES`` in the trace (each trace entry names its slot twice, opening and
closing it), once in the answer (a ranking names each candidate once). Slots past the request's K are
never allowed. Each caller counts the uses its own way (token by token, a whole row at once, a block
of parallel picks); this module says what the counts mean.
"""

from __future__ import annotations

import torch

from dgr2.model.tokenizer import TRACE_SLOT_USES


def section_limit(in_answer: torch.Tensor) -> torch.Tensor:
    """How many times a position's section may name each slot (same shape as ``in_answer``)."""
    return torch.where(in_answer, 1, TRACE_SLOT_USES)


def slot_room(uses: torch.Tensor, in_answer: torch.Tensor) -> torch.Tensor:
    """``[..., K]``: how many more times each slot may be named, from ``uses`` ``[..., K]`` (the times the
    position's section has named each slot so far) and ``in_answer`` ``[...]``."""
    return section_limit(in_answer)[..., None] - uses


def banned_slots(uses: torch.Tensor, in_answer: torch.Tensor, in_request: torch.Tensor) -> torch.Tensor:
    """``[..., K]`` bool: the slots a position may not name: no room left in its section, or not in the
    request (``in_request`` broadcasts against ``uses``)."""
    return (slot_room(uses, in_answer) <= 0) | ~in_request
