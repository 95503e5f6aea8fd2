"""Loss terms shared by the training stages."""

from __future__ import annotations

import torch


def banned_nll(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-log P(a token mask allows)`` per row, ``-log(1 - p_banned)``: the validity term of the CFT and OPD
    losses (the probability a model puts on slots the decoder's constraint would have to exclude)."""
    return torch.logsumexp(logits, -1) - torch.logsumexp(logits.masked_fill(mask, float("-inf")), -1)
