"""Slot exclusions for the block-diffusion decoder: the parallel counterpart of the AR constraint.

A masked position may not name a slot outside the request, nor a slot already decided in its own
section (everything after the decided ``<answer>`` is answer; in the trace, a slot is banned once
decided ``TRACE_SLOT_USES`` times, since each entry names its slot twice). Positions that one
denoising pass unmasks together may still pick a slot more often than their section allows; only
the most confident of them keep it, the others stay masked for the next pass. Training uses the same exclusions
(:func:`recipe.block_diffusion.row_exclusions`), so the model's distribution over the open slots is
what the decoder samples from.
"""

from __future__ import annotations

import torch

from model.decoding import Batch
from model.tokenizer import TRACE_SLOT_USES


def banned_slots(batch: Batch, tokens: torch.Tensor, masked: torch.Tensor,
                 offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[b, S, Kmax]``: slots each block position may not name, given what is decided so far, and
    ``[b, S, Kmax]``: how many more times its section may name each slot (the room that
    :func:`keep_most_confident` shares out among same-pass picks), and ``[b, S]``: which block
    positions lie after a decided ``<answer>``."""
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
    room_answer = 1 - (onehot & after[:, :, None]).sum(dim=1)
    room_trace = TRACE_SLOT_USES - (onehot & ~after[:, :, None]).sum(dim=1)
    pos = offset[:, None] + torch.arange(S, device=dev)[None, :]  # [b, S] continuation index
    in_answer = pos > ans_pos[:, None]
    room = torch.where(in_answer[:, :, None], room_answer[:, None, :], room_trace[:, None, :])
    out_of_request = torch.arange(batch.kmax, device=dev)[None, :] >= batch.k[batch.alive][:, None]
    return (room <= 0) | out_of_request[:, None, :], room, in_answer


def apply_bans(batch: Batch, logits: torch.Tensor, ban: torch.Tensor) -> torch.Tensor:
    """Masks banned slot columns of output-vocabulary logits ``[b, S, n_out]``, and every slot past
    the batch's largest K (no row's request has it)."""
    full = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    full[:, :, batch.head.slot_cols[batch.kmax:]] = True
    full[:, :, batch.slot_cols] = ban
    return logits.masked_fill(full, float("-inf"))


def keep_most_confident(batch: Batch, cand: torch.Tensor, conf: torch.Tensor, unmask: torch.Tensor,
                        room: torch.Tensor, in_answer: torch.Tensor) -> torch.Tensor:
    """``unmask`` without same-pass excess: per row and slot, of the positions of one section that
    pick it, only the ``room`` most confident keep it (ties: the earliest); the rest stay masked.
    A picked slot is never banned, so the pass's most confident position always survives."""
    b, S = cand.shape
    slot_ids = batch.head.token(batch.slot_cols)
    hit = (cand[:, :, None] == slot_ids[None, None, :]) & unmask[:, :, None]  # [b, S, Kmax]
    if not bool((hit.sum(dim=1) > 1).any()):  # no slot picked twice in this pass: room suffices (>= 1)
        return unmask
    # a strictly decreasing tie-break along the block keeps the earliest of equal confidences
    score = conf.float() - torch.arange(S, device=conf.device)[None, :] * 1e-6
    same_section = in_answer[:, :, None] == in_answer[:, None, :]  # [b, S, S]
    ahead = same_section & (score[:, None, :] > score[:, :, None])  # [b, i, j]: j outranks i
    rank = torch.einsum("bij,bjk->bik", ahead.float(), hit.float())  # same-slot picks ahead of i
    loser = hit & (rank >= room)
    return unmask & ~loser.any(dim=2)
