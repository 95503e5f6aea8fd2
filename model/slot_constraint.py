"""Slot exclusions for the block-diffusion decoder: the parallel counterpart of the AR constraint.

A masked position may not name a slot outside the request, nor a slot already decided in its own
section (trace or answer: everything after the decided ``<answer>`` is answer). Positions that one
denoising pass unmasks together may still pick the same slot; only the most confident of them keeps
it, the others stay masked for the next pass. Training uses the same exclusions
(:func:`recipe.block_diffusion.row_exclusions`), so the model's distribution over the open slots is
what the decoder samples from.
"""

from __future__ import annotations

import torch

from model.decoding import Batch


def banned_slots(batch: Batch, tokens: torch.Tensor, masked: torch.Tensor,
                 offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[b, S, Kmax]``: slots each block position may not name, given what is decided so far, and
    ``[b, S]``: which block positions lie after a decided ``<answer>``."""
    vocab, dev = batch.vocab, batch.dev
    b, S = tokens.shape
    L = batch.out_tokens.shape[1]
    decided = batch.out_tokens[batch.alive]  # [b, L]: committed and decided tokens, <pad> elsewhere
    idx = torch.arange(L, device=dev)
    in_block = (idx[None, :] >= offset[:, None]) & (idx[None, :] < offset[:, None] + S)
    block_pos = (idx[None, :] - offset[:, None]).clamp(0, S - 1)
    block_masked = torch.gather(masked, 1, block_pos) & in_block
    decided = decided.masked_fill(block_masked, vocab.pad)
    is_answer_tok = decided == vocab.answer
    ans_pos = torch.where(is_answer_tok, idx, L).min(dim=1).values  # [b]; L while undecided
    slot_ids = batch.head.token(batch.slot_cols)  # [Kmax]
    onehot = decided[:, :, None] == slot_ids[None, None, :]  # [b, L, Kmax]
    after = idx[None, :] > ans_pos[:, None]
    used_answer = (onehot & after[:, :, None]).any(dim=1)
    used_trace = (onehot & ~after[:, :, None]).any(dim=1)
    pos = offset[:, None] + torch.arange(S, device=dev)[None, :]  # [b, S] continuation index
    in_answer = pos > ans_pos[:, None]
    ban = torch.where(in_answer[:, :, None], used_answer[:, None, :], used_trace[:, None, :])
    out_of_request = torch.arange(batch.kmax, device=dev)[None, :] >= batch.k[batch.alive][:, None]
    return ban | out_of_request[:, None, :], in_answer


def apply_bans(batch: Batch, logits: torch.Tensor, ban: torch.Tensor) -> torch.Tensor:
    """Masks banned slot columns of output-vocabulary logits ``[b, S, n_out]``, and every slot past
    the batch's largest K (no row's request has it)."""
    full = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    full[:, :, batch.head.slot_cols[batch.kmax:]] = True
    full[:, :, batch.slot_cols] = ban
    return logits.masked_fill(full, float("-inf"))


def keep_most_confident(batch: Batch, cand: torch.Tensor, conf: torch.Tensor, unmask: torch.Tensor,
                        in_answer: torch.Tensor) -> torch.Tensor:
    """``unmask`` without same-pass duplicates: per row, section and slot, only the most confident
    position keeps it (ties: the earliest). The pass's most confident position always survives."""
    b, S = cand.shape
    slot_ids = batch.head.token(batch.slot_cols)
    onehot = (cand[:, :, None] == slot_ids[None, None, :]) & unmask[:, :, None]  # [b, S, Kmax]
    if not bool(onehot.any()):
        return unmask
    # a strictly decreasing tie-break along the block keeps the earliest of equal confidences
    score = conf.float() - torch.arange(S, device=conf.device)[None, :] * 1e-6
    keep = unmask.clone()
    for section in (in_answer, ~in_answer):
        hit = onehot & section[:, :, None]
        best = torch.where(hit, score[:, :, None], float("-inf")).max(dim=1).values  # [b, Kmax]
        loser = hit & (score[:, :, None] < best[:, None, :])
        keep &= ~loser.any(dim=2)
    return keep
