"""On-policy distillation loss: the frozen AR teacher's next-token distributions on the student's
own decoded sequences, as dense targets at the student's masked positions.

For a rollout ``prompt · y`` the teacher runs one causal pass and gives, for every completion index
``q``, ``p_T(. | prompt, y_<q)``. The student sees ``y`` as a block-diffusion training row
(:mod:`recipe.block_diffusion`): each of its supervised outputs predicts some ``y_q`` (from the
clean stream at a block start, else from the noisy copy where ``y_q`` is masked) and is matched to
the teacher's distribution for that same ``q``. Both distributions are taken over the tokens
neither side's slot exclusions rule out, so the KL is finite and each side is renormalised the way
its decoder would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dgr2.model.output_head import OutputHead
from dgr2.recipe.block_diffusion import DiffusionBatch
from dgr2.recipe.losses import ValidityTerm
from dgr2.recipe.sft import Encoded, slot_exclusions


def completion_index(batch: DiffusionBatch, rows: list[Encoded]) -> torch.Tensor:
    """``[B, L]``: the completion index each output predicts (-1 where none)."""
    B, L = batch.ids.shape
    out = torch.full((B, L), -1, dtype=torch.long)
    for i, e in enumerate(rows):
        T, P = len(e.ids), e.prompt_len
        C = T - P
        out[i, P - 1: T - 1] = torch.arange(C)  # clean stream: position P-1+q predicts q
        for offset in (T, T + C):  # noisy copies: index i predicts i + 1
            out[i, offset: offset + C - 1] = torch.arange(1, C)
    return out


@torch.no_grad()
def teacher_logits(teacher, head: OutputHead, rows: list[Encoded], pad_id: int) -> list[torch.Tensor]:
    """Per row ``[C, n_out]``: the teacher's output-vocabulary logits for each completion token."""
    T = max(len(e.ids) for e in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, e in enumerate(rows):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
    h = teacher.hidden_states(ids)
    return [head(h[i, e.prompt_len - 1: len(e.ids) - 1]) for i, e in enumerate(rows)]


def distill_targets(batch: DiffusionBatch, rows: list[Encoded], t_logits: list[torch.Tensor], vocab) -> tuple:
    """Teacher logits and the teacher's own (AR) slot exclusions aligned to the student's outputs ``[B, L, .]``."""
    index = completion_index(batch, rows)
    B, L = index.shape
    n_out = t_logits[0].shape[-1]
    logits = torch.zeros(B, L, n_out)
    banned = torch.zeros(B, L, batch.banned.shape[-1], dtype=torch.bool)
    for i, e in enumerate(rows):
        has = index[i] >= 0
        q = index[i][has]
        logits[i, has] = t_logits[i][q]
        ar_ban = slot_exclusions(vocab, e, len(e.ids))  # row t bans what predicting token t+1 may not name
        banned[i, has] = ar_ban[e.prompt_len - 1 + q]
    return logits, banned


def kl_loss(head: OutputHead, h: torch.Tensor, batch: DiffusionBatch, t_logits: torch.Tensor,
            t_banned: torch.Tensor, total_weight: torch.Tensor, reverse: bool = False,
            validity: ValidityTerm | None = None) -> torch.Tensor:
    """Weighted KL between teacher and student at the student's supervised outputs
    (forward KL(p_T || p_S) by default; ``reverse`` gives KL(p_S || p_T)). The KL is over the slots
    neither side bans, so it says nothing about the student's mass on banned ones: ``validity`` adds
    ``-log P_S(a slot its own rule allows)`` (weighted, at its margin), the term CFT's ``--validity-weight``
    trains, so that distillation keeps the validity a conversion learned (weighed against every allowed
    token: the KL has no single target)."""
    sel = batch.weights > 0
    s_logits = head(h[sel])
    ban = head.slot_mask(batch.banned[sel] | t_banned[sel])
    # banned entries get log-probability 0 after the softmax, not -inf: a ``where`` over -inf terms
    # still back-propagates NaN (0 * inf), which made every reverse-KL step non-finite (skipped)
    log_s = F.log_softmax(s_logits.masked_fill(ban, float("-inf")), dim=-1).masked_fill(ban, 0.0)
    log_t = F.log_softmax(t_logits[sel].masked_fill(ban, float("-inf")), dim=-1).masked_fill(ban, 0.0)
    p, log_p, log_q = (log_s.exp(), log_s, log_t) if reverse else (log_t.exp(), log_t, log_s)
    kl = (p.masked_fill(ban, 0.0) * (log_p - log_q)).sum(dim=-1)
    if validity is not None and validity.weight:
        kl = kl + validity(s_logits, head.slot_mask(batch.banned[sel]))
    return (kl * batch.weights[sel]).sum() / total_weight
