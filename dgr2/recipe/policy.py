"""Log-probabilities of the block-diffusion policy for RL, by a one-step estimate.

A decoded sequence's exact likelihood under confidence-threshold unmasking depends on the order
positions were unmasked in. We use a documented one-step estimate instead: the sequence is laid out
as a block-diffusion training row with complementary masks (:mod:`recipe.block_diffusion`), so
every completion token is scored exactly once, from the state the decoder would see it in: a
block's first token from the clean prefix (the commit pass's logits), every other token from the
noisy copy in which it is masked, with the other copy's tokens of its block visible. The same masks
score the policy and the reference, so their per-token log-ratio is a KL estimate on the same states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dgr2.model.output_head import OutputHead
from dgr2.recipe.block_diffusion import DiffusionBatch
from dgr2.recipe.sft import Encoded


def scored_outputs(batch: DiffusionBatch, rows: list[Encoded], block: int) -> torch.Tensor:
    """``[B, L]`` bool: the outputs that score each completion token once (see the module docstring)."""
    sel = batch.weights > 0
    for i, e in enumerate(rows):
        T, P = len(e.ids), e.prompt_len
        clean = torch.zeros(batch.ids.shape[1], dtype=torch.bool)
        starts = torch.arange(0, T - P, block)  # completion indices that open a block
        clean[P - 1 + starts] = True
        sel[i, :T] = clean[:T]  # clean stream: block starts only; noisy copies keep their masked outputs
    return sel


def token_logprobs(head: OutputHead, h: torch.Tensor, batch: DiffusionBatch, sel: torch.Tensor,
                   constrained: bool = True) -> torch.Tensor:
    """``[B, L]``: log p(target) at the selected outputs (0 elsewhere), under the decoder's slot exclusions,
    or (``constrained=False``, for rollouts decoded without them) under the model's whole softmax."""
    logits = head(h[sel])
    if constrained:
        logits = logits.masked_fill(head.slot_mask(batch.banned[sel]), float("-inf"))
    logp = F.log_softmax(logits, dim=-1)
    cols = head.col_of[batch.targets[sel]]
    picked = logp.gather(1, cols[:, None])[:, 0]
    # a sampled token the row's exclusions rule out (the decoder's section boundary is decided on the
    # fly, the row's from the final sequence) carries no usable log-probability: score it as 0 for
    # the policy and the reference alike, so it adds nothing to the gradient or the KL
    out = torch.zeros(sel.shape, dtype=logp.dtype)
    out[sel] = torch.where(torch.isfinite(picked), picked, 0.0)
    return out
