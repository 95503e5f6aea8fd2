"""Block-diffusion training sequences: the clean sequence and two complementary noisy copies of its
completion in one row, with the attention mask that makes training match the decoder.

Row layout (Fast-dLLM v2 / BD3-LM style, extended with complementary masks):

    [ x_0 : prompt + completion (clean) | x_t : completion, mask m | x_t' : completion, mask 1-m ]

The completion is cut into blocks of ``S`` tokens aligned at the end of the prompt, exactly where
the decoder places its blocks. Each block draws a noise level ``t ~ U(0, 1)`` and masks each token
with probability ``t`` (at least one token); the second copy masks the complement, so every
completion token is supervised once per row.

Attention (``True`` = may attend):
  clean token i      -> clean tokens j <= i (causal: the committed cache is AR's cache)
  noisy token in block b of copy c -> clean tokens before block b, and copy c's block b (bidirectional)
Positions: every copy reuses the clean absolute positions.

Targets keep the AR next-token shift: a masked token at position p of block b is predicted from
its copy's output at p - 1 when p - 1 is in the same block, and from the clean stream's output at
p - 1 when p starts the block (the decoder takes those logits from the commit pass). The clean
stream therefore also carries the plain AR loss on the completion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dgr2.model.slot_rule import banned_slots
from dgr2.model.tokenizer import MAX_SLOTS, Vocab
from dgr2.recipe.sft import Encoded, slot_exclusions

CLEAN, COPY_A, COPY_B, PAD = 0, 1, 2, 3


@dataclass
class DiffusionBatch:
    ids: torch.Tensor  # [B, L]
    positions: torch.Tensor  # [B, L]
    mask: torch.Tensor  # [B, L, L] bool
    targets: torch.Tensor  # [B, L]: the token the output at this index predicts (pad where none)
    weights: torch.Tensor  # [B, L]: 1 where a loss applies
    banned: torch.Tensor | None = None  # [B, L, MAX_SLOTS]: slots each output may not name (decoder's view)


def block_noise(n: int, block: int, gen: torch.Generator) -> torch.Tensor:
    """Masked positions ``[n]`` of one completion: per-block level t ~ U(0,1), at least one per block."""
    masked = torch.zeros(n, dtype=torch.bool)
    for start in range(0, n, block):
        end = min(n, start + block)
        t = torch.rand((), generator=gen)
        m = torch.rand(end - start, generator=gen) < t
        if not m.any():
            m[torch.randint(end - start, (), generator=gen)] = True
        masked[start:end] = m
    return masked


def row(enc: Encoded, block: int, mask_id: int, pad_id: int, gen: torch.Generator):
    """One row: ids, positions, stream, block index, targets and weights (1-D tensors)."""
    x0 = torch.tensor(enc.ids)
    T, P = len(enc.ids), enc.prompt_len
    C = T - P
    comp = x0[P:]
    m = block_noise(C, block, gen)
    pos_c = torch.arange(P, T)
    blk_c = (pos_c - P) // block
    ids = torch.cat([x0, torch.where(m, mask_id, comp), torch.where(~m, mask_id, comp)])
    positions = torch.cat([torch.arange(T), pos_c, pos_c])
    stream = torch.cat([torch.full((T,), CLEAN), torch.full((C,), COPY_A), torch.full((C,), COPY_B)])
    blocks = torch.cat([torch.full((T,), -1), blk_c, blk_c])
    targets = torch.full((T + 2 * C,), pad_id)
    weights = torch.zeros(T + 2 * C)
    targets[P - 1: T - 1] = x0[P:]  # clean stream: AR next-token targets on the completion
    weights[P - 1: T - 1] = 1.0
    for offset, masked in ((T, m), (T + C, ~m)):
        # copy index i (position P+i) predicts position P+i+1 when that is masked and in the same block
        nxt_masked = torch.zeros(C, dtype=torch.bool)
        nxt_masked[:-1] = masked[1:] & (blk_c[1:] == blk_c[:-1])
        targets[offset: offset + C - 1] = comp[1:]
        weights[offset: offset + C] = nxt_masked.float()
    return ids, positions, stream, blocks, targets, weights


def row_exclusions(vocab: Vocab, enc: Encoded, noise: torch.Tensor, block: int) -> torch.Tensor:
    """``[T + 2C, MAX_SLOTS]``: the slots each output of a row may not name, as the decoder sees them.

    The clean stream uses the AR exclusions (:func:`recipe.sft.slot_exclusions`). A noisy output
    that predicts completion token ``q`` of block ``b`` sees the clean tokens before ``b`` and its
    copy's unmasked tokens in ``b``; the slots among those in ``q``'s section (trace, or answer =
    after ``<answer>``) are banned (in the trace once named ``TRACE_SLOT_USES`` times), as
    :func:`model.slot_constraint.slot_state` does when decoding (both apply :mod:`model.slot_rule`).
    """
    T, P = len(enc.ids), enc.prompt_len
    comp = enc.ids[P:]
    C = len(comp)
    slot = torch.tensor([vocab.slot_of(t) if vocab.slot_of(t) is not None else -1 for t in comp])
    onehot = torch.zeros(C, MAX_SLOTS, dtype=torch.bool)
    is_slot = slot >= 0
    onehot[is_slot.nonzero().squeeze(1), slot[is_slot]] = True
    a_idx = comp.index(vocab.answer) if vocab.answer in comp else C
    idx = torch.arange(C)
    answer = idx > a_idx
    in_request = torch.arange(MAX_SLOTS) < enc.num_slots
    out = torch.zeros(T + 2 * C, MAX_SLOTS, dtype=torch.bool)
    out[:T] = slot_exclusions(vocab, enc, T)
    for offset, masked in ((T, noise), (T + C, ~noise)):
        ban = torch.zeros(C, MAX_SLOTS, dtype=torch.bool)
        for start in range(0, C, block):
            end = min(C, start + block)
            visible = (idx < start) | ((idx >= start) & (idx < end) & ~masked)
            uses_answer = (onehot & (visible & answer)[:, None]).sum(dim=0)
            uses_trace = (onehot & (visible & ~answer)[:, None]).sum(dim=0)
            uses = torch.where(answer[start:end, None], uses_answer, uses_trace)
            ban[start:end] = banned_slots(uses, answer[start:end], in_request)
        out[offset: offset + C - 1] = ban[1:]  # copy index i predicts completion token i + 1
    return out


def attention_mask(positions, stream, blocks, block: int, prompt_len: int) -> torch.Tensor:
    """The visibility rule of the module docstring for one row ``[L, L]``."""
    q_pos, k_pos = positions[:, None], positions[None, :]
    q_str, k_str = stream[:, None], stream[None, :]
    k_clean = k_str == CLEAN
    block_start = prompt_len + blocks[:, None] * block  # of the query's block (noisy queries)
    clean_q = (q_str == CLEAN) & k_clean & (k_pos <= q_pos)
    noisy_q = (q_str != CLEAN) & (q_str != PAD) & (
        (k_clean & (k_pos < block_start)) | ((k_str == q_str) & (blocks[None, :] == blocks[:, None])))
    return clean_q | noisy_q


def collate_diffusion(batch: list[Encoded], block: int, mask_id: int, pad_id: int,
                      gen: torch.Generator, vocab: Vocab | None = None) -> DiffusionBatch:
    """With ``vocab``, also the slot exclusions of every output (:func:`row_exclusions`)."""
    rows = [row(e, block, mask_id, pad_id, gen) for e in batch]
    L = max(len(r[0]) for r in rows)
    B = len(rows)
    ids = torch.full((B, L), pad_id)
    positions = torch.zeros(B, L, dtype=torch.long)
    targets = torch.full((B, L), pad_id)
    weights = torch.zeros(B, L)
    mask = torch.zeros(B, L, L, dtype=torch.bool)
    banned = None if vocab is None else torch.zeros(B, L, MAX_SLOTS, dtype=torch.bool)
    for i, ((r_ids, r_pos, r_str, r_blk, r_tgt, r_w), enc) in enumerate(zip(rows, batch, strict=True)):
        n = len(r_ids)
        if banned is not None:
            C = len(enc.ids) - enc.prompt_len
            banned[i, :n] = row_exclusions(vocab, enc, r_ids[len(enc.ids): len(enc.ids) + C] == mask_id, block)
        ids[i, :n], positions[i, :n], targets[i, :n], weights[i, :n] = r_ids, r_pos, r_tgt, r_w
        mask[i, :n, :n] = attention_mask(r_pos, r_str, r_blk, block, enc.prompt_len)
        mask[i, torch.arange(n, L), torch.arange(n, L)] = True  # padding sees itself only (no NaN rows)
    return DiffusionBatch(ids, positions, mask, targets, weights, banned)
