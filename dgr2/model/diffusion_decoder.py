"""Block-diffusion decoder (Fast-dLLM v2 conventions).

Each sequence appends a block of ``block_size`` ``<mask>`` tokens after its committed prefix and
denoises it over a few forward passes: attention is bidirectional inside the block and reads the
committed KV cache for everything before it. The AR next-token shift is kept: block position ``j``
is predicted from the output at position ``j - 1`` (for ``j = 0``, from the last committed token).
Each step unmasks every masked position whose confidence exceeds ``threshold``, and always at least
the most confident one (:func:`kernels.unmask_select`); after a decided ``<answer>``,
``answer_threshold`` applies instead when it is set. With ``constrain_answer`` (the default, as
for AR) slots outside the request or already decided in the same section are excluded, same-pass
duplicates are deferred (the earliest position keeps the slot), and the answer follows the AR
decoder's grammar (K slots, ``</answer>``, ``<eos>`` once ``<answer>`` is decided; the first rank
is decided before the others; :mod:`model.slot_constraint`). With ``causal_first_rank`` (the
default) the pass that decides rank 1 reads its block up to ``<answer>`` causally, so rank 1 is
predicted from the view AR has.

A full block is committed by one causal pass over its clean tokens, which writes its KV entries
(identical to what AR decoding would have cached) and yields the logits for the next block's first
position. With ``fuse_commit`` that pass is two blocks wide: the fresh block's masks ride along,
attending to the clean block and to each other, so the next block's first denoising step costs no
pass of its own (the outputs are those of the separate passes; a test checks it). Sequences
progress independently: in one forward pass some rows denoise while others commit. A sequence
stops as soon as ``<eos>`` is decided with every position before it decided.
"""

from __future__ import annotations

import math

import torch

from dgr2.kernels import unmask_select
from dgr2.kernels.unmask_select import threshold_rule
from dgr2.model.decoding import Batch, DecodeConfig, SequenceResult
from dgr2.model.slot_constraint import (
    apply_bans,
    grammar_disallow,
    keep_earliest,
    one_answer_per_pass,
    slot_state,
    waits_for_first_rank,
)
from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer


@torch.inference_mode()
def decode_diffusion(model: Transformer, vocab: Vocab, prompts: list[list[int]], num_slots: list[int],
                     cfg: DecodeConfig | None = None) -> list[SequenceResult]:
    cfg = cfg or DecodeConfig()
    S = cfg.block_size
    n_blocks = math.ceil(cfg.max_new_tokens / S)
    batch = Batch(model, vocab, prompts, num_slots, n_blocks * S, block=S)
    dev, B = batch.dev, len(prompts)
    prev_logits = batch.prefill()  # [b, n_out]: predicts each row's next block position 0
    tokens = torch.full((B, S), vocab.mask, dtype=torch.long, device=dev)
    masked = torch.ones(B, S, dtype=torch.bool, device=dev)
    committing = torch.zeros(B, dtype=torch.bool, device=dev)
    offset = torch.zeros(B, dtype=torch.long, device=dev)  # continuation index of each row's block start
    # per row, the block positions read causally: S when committing, else up to a decided <answer>
    # while rank 1 is open (causal_first_rank), else 0
    rank1_causal = torch.zeros(B, dtype=torch.long, device=dev)
    steps_log: list[tuple[torch.Tensor, torch.Tensor]] = []  # per pass: (rows denoised, tokens each decided)
    arange_s = torch.arange(S, device=dev)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed) if cfg.temperature > 0 else None

    while True:
        block_in = torch.where(masked, vocab.mask, tokens)
        n_commit = int(committing.sum()) if cfg.fuse_commit else 0  # one host sync, and none when off
        fuse = n_commit > 0 and 2 * n_commit >= committing.numel()
        if fuse:
            # [finished block ; fresh masks]: committing rows read their clean block causally and the
            # masks see all of it (their next block's first denoising step); the other rows denoise
            # their block in the first half and ignore the second
            wide = torch.cat([block_in, torch.full_like(block_in, vocab.mask)], dim=1)
            out = batch.logits(wide, causal=torch.where(committing, S, rank1_causal), visible=S + committing.int() * S)
            logits = torch.where(committing[:, None, None], out[:, S:], out[:, :S])  # [b, S, n_out]
            commit_last = out[:, S - 1]
        else:
            logits = batch.logits(block_in, causal=torch.where(committing, S, rank1_causal))  # [b, S, n_out]
            commit_last = logits[:, -1]

        # rows that committed their finished block this pass start a fresh one
        batch.cache.commit(torch.where(committing, S, 0))
        prev_logits = torch.where(committing[:, None], commit_last, prev_logits)
        offset = offset + committing * S
        masked = masked | committing[:, None]

        # rows that denoise: next-token shift, then the threshold rule on the still-masked positions
        denoise = torch.ones_like(committing) if fuse else ~committing
        shifted = torch.cat([prev_logits[:, None], logits[:, :-1]], dim=1)  # [b, S, n_out]
        belief = shifted  # the model's own slot distribution, recorded for the guard (as AR records it)
        eligible = masked & denoise[:, None]  # positions this pass may unmask
        if cfg.constrain_answer:
            state = slot_state(batch, tokens, masked, offset)
            shifted = apply_bans(batch, shifted, state.ban)
            if cfg.answer_grammar:
                shifted = shifted.masked_fill(grammar_disallow(batch, state, cfg.max_new_tokens, shifted.shape[-1]),
                                              float("-inf"))
                eligible = eligible & ~waits_for_first_rank(state)
        if cfg.temperature > 0:  # RL rollouts: sample each position, the threshold rule on the sample's probability
            probs = torch.softmax(shifted.float() / cfg.temperature, dim=-1)
            cand_cols = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=gen).view(probs.shape[:2])
            conf = probs.gather(-1, cand_cols[..., None])[..., 0]
            unmask = threshold_rule(conf, eligible, cfg.threshold)
        else:
            cand_cols, conf, unmask = unmask_select(shifted, eligible, cfg.threshold)
        if cfg.answer_threshold is not None:
            unmask = unmask | (eligible & state.in_answer & (conf >= cfg.answer_threshold))
        cand = batch.head.token(cand_cols)
        if cfg.constrain_answer:
            unmask = keep_earliest(batch, cand, unmask, state)
            if cfg.answer_grammar:
                unmask = one_answer_per_pass(batch, cand, unmask, state)
        tokens = torch.where(unmask, cand, tokens)
        masked = masked & ~unmask
        rows, cols = unmask.nonzero(as_tuple=True)
        pos = offset[rows] + cols
        orig = batch.alive[rows]
        batch.out_tokens[orig, pos] = cand[rows, cols]
        # one "sequence" per decided position, so each gets its own K
        batch.out_scores[orig, pos] = batch.scores(belief[rows, cols][:, None], rows)[:, 0]
        steps_log.append((batch.alive[denoise], unmask[denoise].sum(1)))

        if cfg.causal_first_rank:  # next pass: read up to a decided <answer> causally while rank 1 is open
            is_ans = (tokens == vocab.answer) & ~masked
            a = torch.where(is_ans, arange_s, S).min(dim=1).values
            open_ = (a + 1 < S) & masked.gather(1, (a + 1).clamp(max=S - 1)[:, None])[:, 0]
            rank1_causal = torch.where(open_, a + 1, 0)

        # stop: <eos> decided with everything before it decided
        decided_prefix = (~masked).long().cumprod(dim=1).sum(dim=1)  # [b] leading decided positions
        is_eos = (tokens == vocab.eos) & ~masked
        first_eos = torch.where(is_eos, arange_s, S).min(dim=1).values
        stopped = denoise & (first_eos < decided_prefix) & (not cfg.ignore_eos)
        batch.length[batch.alive] = torch.where(stopped, offset + first_eos + 1, offset + S - masked.sum(1))
        full = denoise & ~masked.any(dim=1) & ~stopped
        last_block = full & (offset + S >= n_blocks * S)  # budget spent: nothing left to commit for
        finished = stopped | last_block
        committing = full & ~last_block

        if bool(finished.any()):
            keep = batch.drop_finished(~finished)
            if keep.numel() == 0:
                break
            tokens, masked, committing = tokens[keep], masked[keep], committing[keep]
            offset, prev_logits, rank1_causal = offset[keep], prev_logits[keep], rank1_causal[keep]

    results = batch.results()
    for rows, counts in steps_log:  # read back once, after decoding, not once per pass
        for r, n in zip(rows.tolist(), counts.tolist(), strict=True):
            results[r].unmasked_per_step.append(n)
    return results

