"""The answer constraint of the block-diffusion decoder: the parallel counterpart of the AR one.

Slot exclusions: the slot rule (:mod:`model.slot_rule`) applied to what is decided so far (everything
after the decided ``<answer>`` is answer). Positions that one denoising pass unmasks together may
still pick a slot more often than their section allows; only the earliest of them keep it, the
others stay masked for the next pass.
Training uses the same exclusions (:func:`recipe.block_diffusion.row_exclusions`), so the model's
distribution over the open slots is what the decoder samples from.

Answer grammar (what the AR decoder enforces token by token, here by position): once ``<answer>``
is decided at continuation index ``a``, the answer's layout is known, so ``a+1 .. a+K`` may only be
slots, ``a+K+1`` only ``</answer>`` and what follows only ``<eos>``; before it, ``</answer>`` and
``<eos>`` are banned and so is a second ``<answer>``. Until ``<answer>`` is decided, it may only go
after every decided position of the block (else a trace token decided earlier would sit inside the
answer), the position after a decided ``</think>`` and the last position from which a full answer
still fits the budget may only be ``<answer>``, and no later position may be. In a pass that picks ``<answer>``, the
positions after it wait one pass, so that they are decided under the layout it fixes; and the
answer's first rank is decided before the others (:func:`waits_for_head`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from dgr2.model.decoding import Batch
from dgr2.model.slot_rule import banned_slots, slot_room


class SlotState(NamedTuple):
    ban: torch.Tensor  # [b, S, Kmax]: slots each block position may not name, given what is decided
    room: torch.Tensor  # [b, S, Kmax]: how many more times its section may name each slot
    in_answer: torch.Tensor  # [b, S]: block positions after a decided <answer>
    pos: torch.Tensor  # [b, S]: continuation index of each block position
    ans_pos: torch.Tensor  # [b]: continuation index of the decided <answer> (L while undecided)
    think_end: torch.Tensor  # [b]: continuation index of the first decided </think> (L if none)
    past_decided: torch.Tensor  # [b, S]: block positions after every decided one (where <answer> may go)
    undecided: int  # L: the value of ans_pos / think_end when nothing is decided


def slot_state(batch: Batch, tokens: torch.Tensor, masked: torch.Tensor, offset: torch.Tensor) -> SlotState:
    """Slot exclusions of every block position given what is decided so far (:mod:`model.slot_rule`),
    the room each section has left per slot (which :func:`keep_earliest` shares out among same-pass
    picks), and where the decided ``<answer>`` and ``</think>`` lie (for :func:`grammar_disallow`)."""
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
    think_end = torch.where(decided == vocab.end_think, idx, L).min(dim=1).values
    # uses of each slot per section, one bin per (section, slot) and a spare bin for other tokens
    kmax = batch.kmax
    after = idx[None, :] > ans_pos[:, None]
    bins = batch.slot_index[decided] + after * (kmax + 1)  # [b, L]
    uses = torch.zeros(b, 2 * (kmax + 1), dtype=torch.long, device=dev).scatter_add_(1, bins, torch.ones_like(bins))
    pos = offset[:, None] + torch.arange(S, device=dev)[None, :]  # [b, S] continuation index
    in_answer = pos > ans_pos[:, None]
    section_uses = torch.where(in_answer[:, :, None], uses[:, None, kmax + 1: 2 * kmax + 1], uses[:, None, :kmax])
    in_request = torch.arange(kmax, device=dev)[None, :] < batch.k[batch.alive][:, None]
    arange_s = torch.arange(S, device=dev)
    last_decided = torch.where(masked, -1, arange_s[None, :]).max(dim=1).values  # [b]; -1: none yet
    past_decided = arange_s[None, :] > last_decided[:, None]
    return SlotState(banned_slots(section_uses, in_answer, in_request[:, None, :]),
                     slot_room(section_uses, in_answer), in_answer, pos, ans_pos, think_end, past_decided, L)


def waits_for_head(state: SlotState, masked: torch.Tensor, head: int) -> torch.Tensor:
    """``[b, S]``: answer positions of rank ``head`` or later while a rank before it is still masked in the
    block (earlier blocks are decided; a rank in a later block has no tail rank in this one).

    With ``head = 2`` this is "rank 1 goes first": rank 1, the model's guess at the held-out item (a
    spread-out distribution), is decided before any surer later rank can claim its candidate; the
    tail ranks follow the trace's strengths and lose nothing by waiting (at most one pass per answer).
    Answer claims raise ``head`` so that the whole head is decided before the tail claims."""
    rank = state.pos - state.ans_pos[:, None]  # 1 = the first slot
    open_head = (masked & state.in_answer & (rank < head)).any(dim=1)
    return state.in_answer & (rank >= head) & open_head[:, None]


def grammar_disallow(batch: Batch, state: SlotState, n_out: int) -> torch.Tensor:
    """``[b, S, n_out]``: output columns each block position may not take under the answer grammar
    (see the module docstring). Every position keeps at least one allowed column."""
    vocab, head, dev = batch.vocab, batch.head, batch.dev
    k = batch.k[batch.alive][:, None]  # [b, 1]
    pos, ans = state.pos, state.ans_pos[:, None]
    decided = ans < state.undecided
    j = pos - ans  # place inside the answer (1 = first slot)
    # the last index where <answer> still fits the row's own budget
    latest = (batch.budget[batch.alive][:, None] - (k + 3)).clamp(min=0)
    columns = torch.arange(n_out, device=dev)
    is_slot = torch.zeros(n_out, dtype=torch.bool, device=dev)
    is_slot[head.slot_cols] = True
    answer, end_answer, eos = (head.col(t) for t in (vocab.answer, vocab.end_answer, vocab.eos))

    def only(col: int | None, where: torch.Tensor) -> torch.Tensor:  # everything but col (slots if None)
        allowed = is_slot if col is None else columns == col
        return where[:, :, None] & ~allowed[None, None, :]

    slots_only = decided & (j >= 1) & (j <= k)
    # an <answer> before a decided position would put that (trace) token inside the answer
    answer_fits = ~decided & state.past_decided & (pos <= latest)
    must_answer = answer_fits & ((pos == state.think_end[:, None] + 1) | (pos == latest))
    out = only(None, slots_only) | only(end_answer, decided & (j == k + 1)) | only(eos, decided & (j >= k + 2))
    out |= only(answer, must_answer)
    trace = (decided & (j < 0)) | (~decided & ~must_answer)  # known trace, or not yet known to be answer
    for col in (end_answer, eos):
        out[:, :, col] |= trace
    out[:, :, answer] |= ~answer_fits
    return out


def one_answer_per_pass(batch: Batch, cand: torch.Tensor, unmask: torch.Tensor, state: SlotState) -> torch.Tensor:
    """``unmask`` without the positions after a ``<answer>`` picked in this pass (rows whose answer was
    undecided): they are decided next pass, under the layout that ``<answer>`` fixes."""
    S = cand.shape[1]
    picks = unmask & (cand == batch.vocab.answer) & (state.ans_pos == state.undecided)[:, None]
    first = torch.where(picks, torch.arange(S, device=cand.device)[None, :], S).min(dim=1).values
    return unmask & (torch.arange(S, device=cand.device)[None, :] <= first[:, None])


def apply_bans(batch: Batch, logits: torch.Tensor, ban: torch.Tensor) -> torch.Tensor:
    """Masks banned slot columns of output-vocabulary logits ``[b, S, n_out]``, and every slot past
    the batch's largest K (no row's request has it)."""
    full = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    full[:, :, batch.head.slot_cols[batch.kmax:]] = True
    full[:, :, batch.slot_cols] = ban
    return logits.masked_fill(full, float("-inf"))


def keep_earliest(batch: Batch, cand: torch.Tensor, unmask: torch.Tensor, state: SlotState) -> torch.Tensor:
    """``unmask`` without same-pass excess: per row and slot, of the positions of one section that
    pick it, only the ``room`` earliest keep it; the rest stay masked for the next pass.

    Position order, not confidence: the answer is a Plackett-Luce sequence, rank r chosen among the
    candidates ranks < r left open, so an earlier rank has the first claim on a slot, as it has in
    AR decoding. Ranking by confidence gave the answer's first slot (the model's guess at the
    held-out item, a spread-out distribution) to whichever later rank was surer of the same item,
    and cost the shipped CFT model much of its HR@1 (measured in docs/design.md). A picked slot is
    never banned (room >= 1), so each slot's earliest pick survives and every pass makes progress.
    """
    slot_ids = batch.head.token(batch.slot_cols)
    hit = (cand[:, :, None] == slot_ids[None, None, :]) & unmask[:, :, None]  # [b, S, Kmax]
    if not bool((hit.sum(dim=1) > 1).any()):  # no slot picked twice in this pass: room suffices (>= 1)
        return unmask
    # the answer section follows the trace inside a block, so counting per section is two cumsums
    in_answer = state.in_answer[:, :, None]
    hit_i = hit.int()
    earlier = torch.where(in_answer, (hit_i * in_answer).cumsum(dim=1), (hit_i * ~in_answer).cumsum(dim=1)) - hit_i
    loser = hit & (earlier >= state.room)
    return unmask & ~loser.any(dim=2)
