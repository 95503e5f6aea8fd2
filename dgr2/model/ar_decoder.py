"""Autoregressive decoder: prefill, then one token per forward pass with the KV cache (batched, greedy).

Constrained in the answer, which is where AR gets its validity from: after ``<answer>`` only unused
in-request slots may follow, then ``</answer>``, then ``<eos>``. Slots follow the slot rule
(:mod:`model.slot_rule`; training applies it too, :func:`recipe.sft.slot_exclusions`). Slots
outside the request and the ``<pad>``/``<mask>`` tokens are never emitted; ``</think>`` is followed
by ``<answer>``, and ``<answer>`` is forced when the remaining budget only just fits a full answer,
so a constrained AR answer is always a valid permutation.
"""

from __future__ import annotations

import torch

from dgr2.model.decoding import Batch, DecodeConfig, SequenceResult
from dgr2.model.slot_rule import banned_slots
from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer

TRACE, ANSWER, DONE = 0, 1, 2


class AnswerConstraint:
    """Per-row phase and used slots; masks output-vocabulary logits (columns) to the allowed next tokens."""

    def __init__(self, vocab: Vocab, batch: Batch, n_out: int) -> None:
        dev, B = batch.dev, batch.alive.numel()
        self.vocab, self.head = vocab, batch.head
        self.slot_cols = batch.slot_cols
        self.slot_ids = batch.head.token(batch.slot_cols)
        self.k = batch.k.clone()
        self.budget = batch.budget.clone()
        self.phase = torch.zeros(B, dtype=torch.long, device=dev)
        self.uses = torch.zeros(B, batch.kmax, dtype=torch.long, device=dev)  # per slot, in the current section
        self.prev = torch.full((B,), vocab.think, dtype=torch.long, device=dev)
        in_request = torch.arange(batch.kmax, device=dev)[None, :] < self.k[:, None]  # [B, Kmax]
        # every slot token past a row's K, up to <c100>, is out of the request anywhere in the output
        all_slots = self.head.cols(vocab.slot_ids)
        self.never = torch.zeros(B, n_out, dtype=torch.bool, device=dev)
        self.never[:, all_slots] = torch.arange(all_slots.numel(), device=dev)[None, :] >= self.k[:, None]
        self.in_request = in_request
        # fixed per decode: the column of </answer>, and the masks that allow only <eos> / only <answer>
        self.end_answer_col = self.head.col(vocab.end_answer)
        self.not_eos = torch.ones(n_out, dtype=torch.bool, device=dev)
        self.not_eos[self.head.col(vocab.eos)] = False
        self.not_answer = torch.ones(n_out, dtype=torch.bool, device=dev)
        self.not_answer[self.head.col(vocab.answer)] = False
        # in the trace, <eos> and </answer> would end the sequence without an answer
        self.trace_never = self.never.clone()
        self.trace_never[:, self.head.col(vocab.eos)] = True
        self.trace_never[:, self.end_answer_col] = True

    def apply(self, logits: torch.Tensor, t: int) -> torch.Tensor:
        """``t``: the index of the token being decoded; each row's budget decides when ``<answer>`` is forced."""
        remaining = self.budget - t
        banned = banned_slots(self.uses, self.phase == ANSWER, self.in_request)  # [B, Kmax]
        open_slots = ~banned
        answer_allow = torch.zeros_like(self.never)
        answer_allow[:, self.slot_cols] = open_slots
        answer_allow[:, self.end_answer_col] = ~open_slots.any(dim=1)
        force_answer = (self.phase == TRACE) & ((self.prev == self.vocab.end_think) | (remaining <= self.k + 3))
        trace_disallow = self.trace_never.clone()
        trace_disallow[:, self.slot_cols] |= banned
        disallow = torch.where((self.phase == ANSWER)[:, None], ~answer_allow, trace_disallow)
        disallow = torch.where((self.phase == DONE)[:, None], self.not_eos, disallow)
        disallow = torch.where(force_answer[:, None], self.not_answer, disallow)
        return logits.masked_fill(disallow, float("-inf"))

    def update(self, nxt: torch.Tensor) -> None:
        v = self.vocab
        named = nxt[:, None] == self.slot_ids[None, :]
        self.uses += named.long()
        starts_answer = (self.phase == TRACE) & (nxt == v.answer)
        self.uses[starts_answer] = 0  # the answer's section counts its own uses
        self.phase = torch.where(starts_answer, ANSWER, self.phase)
        self.phase = torch.where((self.phase == ANSWER) & (nxt == v.end_answer), DONE, self.phase)
        self.prev = nxt

    def keep(self, rows: torch.Tensor) -> None:
        for name in ("k", "budget", "phase", "uses", "prev", "never", "trace_never", "in_request"):
            setattr(self, name, getattr(self, name)[rows])


@torch.inference_mode()
def decode_ar(model: Transformer, vocab: Vocab, prompts: list[list[int]], num_slots: list[int],
              cfg: DecodeConfig | None = None, record_passes: bool = False,
              budgets: list[int] | None = None) -> list[SequenceResult]:
    """``record_passes``: each result's ``decided_at`` names the pass that decided each position.
    ``budgets``: each row's own completion budget (default ``cfg.max_new_tokens`` for all)."""
    cfg = cfg or DecodeConfig()
    batch = Batch(model, vocab, prompts, num_slots, cfg.max_new_tokens, block=1, record_passes=record_passes,
                  budgets=budgets)
    logits = batch.prefill()  # [B, n_out]: output-vocabulary logits of token 0
    constraint = AnswerConstraint(vocab, batch, logits.shape[-1]) if cfg.constrain_answer else None
    for t in range(cfg.max_new_tokens):
        rows_alive = batch.alive
        scores = batch.scores(logits[:, None])[:, 0]  # the model's own belief, before constraints
        if constraint is not None:
            logits = constraint.apply(logits, t)
        nxt = batch.head.token(logits.argmax(dim=-1))  # [b] token ids
        batch.out_tokens[rows_alive, t] = nxt
        batch.out_scores[rows_alive, t] = scores
        batch.length[rows_alive] = t + 1
        if batch.decided_at is not None:
            batch.record_decided(rows_alive, t)
        if constraint is not None:
            constraint.update(nxt)
        if t == cfg.max_new_tokens - 1:
            break
        if not cfg.ignore_eos:
            stop = nxt == vocab.eos
            if bool(stop.any()):
                rows = batch.drop_finished(~stop)
                if rows.numel() == 0:
                    break
                nxt = nxt[rows]
                if constraint is not None:
                    constraint.keep(rows)
        logits = batch.logits(nxt[:, None])[:, 0]
        batch.cache.commit(1)
    return batch.results()
