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
from dataclasses import dataclass, fields

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
    waits_for_head,
)
from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer


@dataclass
class BlockState:
    """Each live row's current block, as the AR decoder keeps its answer state: ``keep(rows)`` follows
    the batch when finished rows leave."""

    tokens: torch.Tensor  # [b, S]: the block's decided tokens (anything where still masked)
    masked: torch.Tensor  # [b, S]: positions not decided yet
    committing: torch.Tensor  # [b]: the block is full and this pass commits it
    offset: torch.Tensor  # [b]: continuation index of the block's first position
    prev_logits: torch.Tensor  # [b, n_out]: the logits that predict block position 0
    # block positions the next pass reads causally: up to a decided <answer> while rank 1 is open
    # (causal_first_rank), else 0; committing rows read all S
    rank1_causal: torch.Tensor  # [b]
    # [b, S], kept under block_cache only (None otherwise): positions whose keys and values in the cache
    # do not reflect their current token (decided since, or never computed), which a pass recomputes
    stale: torch.Tensor | None = None

    @classmethod
    def first(cls, vocab: Vocab, prev_logits: torch.Tensor, S: int, block_cache: bool = False) -> BlockState:
        B, dev = prev_logits.shape[0], prev_logits.device
        zeros = torch.zeros(B, dtype=torch.long, device=dev)
        return cls(torch.full((B, S), vocab.mask, dtype=torch.long, device=dev),
                   torch.ones(B, S, dtype=torch.bool, device=dev), torch.zeros(B, dtype=torch.bool, device=dev),
                   zeros, prev_logits, zeros.clone(),
                   torch.ones(B, S, dtype=torch.bool, device=dev) if block_cache else None)

    def keep(self, rows: torch.Tensor) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                setattr(self, f.name, value[rows])


def forward(batch: Batch, st: BlockState, vocab: Vocab, fuse_commit: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One pass over every row's block: committing rows read their full block causally (writing its KV
    entries), the others denoise theirs. With ``fuse_commit`` and at least half the rows committing,
    the pass is two blocks wide and the committing rows' fresh masks ride along (their next block's
    first denoising step). Under the block cache (``st.stale`` kept) denoising rows compute only
    :func:`needed_positions`.
    Returns the block logits ``[b, S, n_out]`` each row denoises with, the committing rows'
    last-position logits (which predict the next block's position 0), and whether the pass was fused."""
    S = st.tokens.shape[1]
    block_in = torch.where(st.masked, vocab.mask, st.tokens)
    causal = torch.where(st.committing, S, st.rank1_causal)
    n_commit = int(st.committing.sum()) if fuse_commit else 0  # one host sync, and none when off
    fused = n_commit > 0 and 2 * n_commit >= st.committing.numel()
    if fused:
        # [finished block ; fresh masks]: the masks see all of the clean block; the other rows denoise
        # their block in the first half and ignore the second
        block_in = torch.cat([block_in, torch.full_like(block_in, vocab.mask)], dim=1)
        visible = S + st.committing.int() * S
    else:
        visible = None
    if st.stale is None:  # no block cache: every pass computes every position, so nothing goes stale
        out = batch.logits(block_in, causal=causal, visible=visible)
    else:
        out = sparse_logits(batch, st, block_in, causal, visible)
        # a committed row's next block was computed in a fused pass, else not at all yet
        st.stale = st.stale | (st.committing[:, None] & (not fused))
    if fused:
        return torch.where(st.committing[:, None, None], out[:, S:], out[:, :S]), out[:, S - 1], True
    return out, out[:, -1], False


def needed_positions(st: BlockState, width: int) -> torch.Tensor:
    """``[b, width]``: what a pass under ``block_cache`` computes. A denoising row: the outputs that predict
    a masked position (position ``j - 1`` for a masked ``j``) and the positions whose cached keys and
    values are stale; the rest keep the keys and values an earlier pass left. A committing row: all
    of its window (its committed entries must be exact)."""
    S = st.tokens.shape[1]
    predicts_masked = torch.cat([st.masked[:, 1:], torch.zeros_like(st.masked[:, :1])], dim=1)
    need = predicts_masked | st.stale
    need = torch.cat([need, torch.zeros_like(need)], dim=1)[:, :width] if width > S else need
    return need | st.committing[:, None]


def sparse_logits(batch: Batch, st: BlockState, block_in: torch.Tensor, causal: torch.Tensor,
                  visible: torch.Tensor | None) -> torch.Tensor:
    """The pass on :func:`needed_positions` only, its logits scattered back to ``[b, width, n_out]``
    (positions not computed hold zeros, which nothing reads)."""
    b, width = block_in.shape
    need = needed_positions(st, width)
    counts = need.sum(dim=1)
    R, everything = (int(x) for x in torch.stack([counts.max(), need.all()]).tolist())  # one host sync
    R = max(R, 1)  # a row that needs nothing recomputes its position 0, whatever batch it is in
    if everything:
        out = batch.logits(block_in, causal=causal, visible=visible)
        st.stale = torch.zeros_like(st.stale)
        return out
    # rows that need more than others do not make the others compute more: a row's decode does not
    # depend on the batch it is in
    arange_w = torch.arange(width, device=block_in.device)
    order = torch.where(need, arange_w, width + arange_w).argsort(dim=1)[:, :R]  # needed positions first
    # rows with fewer than R repeat their first (the same inputs, so the same keys and values)
    q_index = torch.where(torch.arange(R, device=block_in.device) < counts[:, None], order, order[:, :1])
    out = batch.logits(block_in.gather(1, q_index), causal=causal, visible=visible, query_index=q_index,
                       block_len=width)
    dense = out.new_zeros(b, width, out.shape[-1])
    dense.scatter_(1, q_index[:, :, None].expand_as(out), out)
    st.stale = st.stale & ~need[:, : st.stale.shape[1]]
    return dense


def start_fresh_blocks(batch: Batch, st: BlockState, commit_last: torch.Tensor) -> None:
    """Rows that committed their finished block this pass move on to a fresh, fully masked one."""
    S = st.tokens.shape[1]
    batch.cache.commit(torch.where(st.committing, S, 0))
    st.prev_logits = torch.where(st.committing[:, None], commit_last, st.prev_logits)
    st.offset = st.offset + st.committing * S
    st.masked = st.masked | st.committing[:, None]


def select(batch: Batch, st: BlockState, logits: torch.Tensor, denoise: torch.Tensor, cfg: DecodeConfig,
           gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions this pass unmasks and their tokens: the next-token shift, the answer constraint
    (:mod:`model.slot_constraint`), then the threshold rule. Returns ``(cand, unmask, belief)``:
    candidate tokens ``[b, S]``, the positions to unmask, and the unconstrained shifted logits (the
    model's own belief, which the guard reads as AR records it)."""
    shifted = torch.cat([st.prev_logits[:, None], logits[:, :-1]], dim=1)  # [b, S, n_out]
    belief = shifted
    eligible = st.masked & denoise[:, None]
    state = None
    if cfg.constrain_answer:
        state = slot_state(batch, st.tokens, st.masked, st.offset)
        shifted = apply_bans(batch, shifted, state.ban)
        if cfg.answer_grammar:
            shifted = shifted.masked_fill(grammar_disallow(batch, state, shifted.shape[-1]),
                                          float("-inf"))
            eligible = eligible & ~waits_for_head(state, st.masked, 2)  # rank 1 goes first
            if cfg.answer_claims and cfg.claims_from_rank > 2:  # then the rest of the head, before the tail claims
                eligible = eligible & ~waits_for_head(state, st.masked, cfg.claims_from_rank)
    if cfg.temperature > 0:  # RL rollouts: sample each position, the threshold rule on the sample's probability
        probs = torch.softmax(shifted.float() / cfg.temperature, dim=-1)
        cand_cols = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=gen).view(probs.shape[:2])
        conf = probs.gather(-1, cand_cols[..., None])[..., 0]
        unmask = threshold_rule(conf, eligible, cfg.threshold)
    else:
        cand_cols, conf, unmask = threshold_select(shifted, eligible, state, cfg)
        if cfg.answer_claims and cfg.answer_grammar and state is not None:  # the grammar says where slots go
            cand_cols, conf, unmask = claim_in_order(batch, shifted, eligible, state, cfg, cand_cols, conf, unmask)
    cand = batch.head.token(cand_cols)
    if state is not None:
        unmask = keep_earliest(batch, cand, unmask, state)
        if cfg.answer_grammar:
            unmask = one_answer_per_pass(batch, cand, unmask, state)
    return cand, unmask, belief


def claim_in_order(batch: Batch, shifted: torch.Tensor, eligible: torch.Tensor, state, cfg: DecodeConfig,
                   cand_cols: torch.Tensor, conf: torch.Tensor, unmask: torch.Tensor):
    """Answer claims (``DecodeConfig.answer_claims``) in one sweep over the block in position order: a
    claiming rank (an eligible answer position from ``claims_from_rank`` on) takes its most probable
    slot among those the earlier unmasked answer positions left, and unmasks if that renormalised
    probability passes the threshold rule; the other positions keep the plain rule's picks. The same
    result as re-selecting until no claiming rank picks a taken slot (the reference in
    tests/model/test_pass_economy.py), with one step per position instead of one full re-selection
    per settled clash. Returns ``(cand_cols, conf, unmask)``."""
    rank = state.pos - state.ans_pos[:, None]
    k = batch.k[batch.alive][:, None]
    claims = eligible & state.in_answer & (rank >= cfg.claims_from_rank) & (rank <= k)  # the slot positions
    first = torch.where(claims.any(dim=0))[0]
    if first.numel() == 0:  # (one host sync)
        return cand_cols, conf, unmask
    b, S = claims.shape
    kmax = batch.kmax
    # answer positions may only name slots (the grammar), so their probability mass is on the slot columns
    probs = torch.softmax(shifted.float(), dim=-1)[..., batch.slot_cols]  # [b, S, Kmax]
    cand_cols, conf, unmask = cand_cols.clone(), conf.clone(), unmask.clone()
    slot_of = batch.slot_index[batch.head.token(cand_cols)]  # [b, S]; kmax for tokens that are not slots
    taken = torch.zeros(b, kmax + 1, dtype=torch.bool, device=shifted.device)
    rows = torch.arange(b, device=shifted.device)
    answer_threshold = cfg.answer_threshold
    for j in range(int(first[0]), S):
        c = claims[:, j]
        p = probs[:, j].masked_fill(taken[:, :kmax], 0.0)
        best_p, best = p.max(dim=-1)
        c_conf = best_p / p.sum(dim=-1).clamp_min(1e-30)
        passes = c_conf > cfg.threshold
        if answer_threshold is not None:
            passes = passes | (c_conf >= answer_threshold)
        cand_cols[:, j] = torch.where(c, batch.slot_cols[best], cand_cols[:, j])
        conf[:, j] = torch.where(c, c_conf, conf[:, j])
        unmask[:, j] = torch.where(c, passes, unmask[:, j])
        slot = torch.where(c, best, slot_of[:, j])
        taken[rows, slot] |= unmask[:, j] & state.in_answer[:, j]
    # the threshold rule's progress guarantee, for the rows the sweep left with nothing to unmask: the rule
    # over their eligible positions with no threshold passable takes each one's surest
    stuck = eligible & ~unmask.any(dim=1, keepdim=True)
    return cand_cols, conf, unmask | threshold_rule(conf, stuck, math.inf)


def threshold_select(shifted: torch.Tensor, eligible: torch.Tensor, state, cfg: DecodeConfig):
    """The threshold rule (:func:`kernels.unmask_select`), with ``answer_threshold`` after a decided
    ``<answer>``: ``(cand_cols, conf, unmask)``."""
    cand_cols, conf, unmask = unmask_select(shifted, eligible, cfg.threshold)
    if cfg.answer_threshold is not None:
        unmask = unmask | (eligible & state.in_answer & (conf >= cfg.answer_threshold))
    return cand_cols, conf, unmask


def decide(batch: Batch, st: BlockState, cand: torch.Tensor, unmask: torch.Tensor, belief: torch.Tensor) -> None:
    """Write the unmasked positions into the block and the batch's output (tokens and the guard's scores)."""
    st.tokens = torch.where(unmask, cand, st.tokens)
    st.masked = st.masked & ~unmask
    if st.stale is not None:
        st.stale = st.stale | unmask
    rows, cols = unmask.nonzero(as_tuple=True)
    pos = st.offset[rows] + cols
    orig = batch.alive[rows]
    batch.out_tokens[orig, pos] = cand[rows, cols]
    if batch.decided_at is not None:
        batch.record_decided(orig, pos)
    # one "sequence" per decided position, so each gets its own K
    batch.out_scores[orig, pos] = batch.scores(belief[rows, cols][:, None], rows)[:, 0]


def rank1_view(st: BlockState, vocab: Vocab) -> torch.Tensor:
    """Per row, the block positions the next pass reads causally: up to a decided ``<answer>`` while
    the rank after it is still masked, else 0."""
    S = st.tokens.shape[1]
    arange_s = torch.arange(S, device=st.tokens.device)
    a = torch.where((st.tokens == vocab.answer) & ~st.masked, arange_s, S).min(dim=1).values
    open_ = (a + 1 < S) & st.masked.gather(1, (a + 1).clamp(max=S - 1)[:, None])[:, 0]
    return torch.where(open_, a + 1, 0)


def finish_rows(batch: Batch, st: BlockState, denoise: torch.Tensor, vocab: Vocab, ignore_eos: bool,
                budget: int) -> torch.Tensor:
    """Set each row's length; mark full blocks for commit; return the rows that are done: ``<eos>``
    decided with every position before it decided, or the budget's last block full."""
    S = st.tokens.shape[1]
    arange_s = torch.arange(S, device=st.tokens.device)
    decided_prefix = (~st.masked).long().cumprod(dim=1).sum(dim=1)  # [b] leading decided positions
    first_eos = torch.where((st.tokens == vocab.eos) & ~st.masked, arange_s, S).min(dim=1).values
    stopped = denoise & (first_eos < decided_prefix) & (not ignore_eos)
    batch.length[batch.alive] = torch.where(stopped, st.offset + first_eos + 1, st.offset + S - st.masked.sum(1))
    full = denoise & ~st.masked.any(dim=1) & ~stopped
    last_block = full & (st.offset + S >= budget)  # nothing left to commit for
    st.committing = full & ~last_block
    return stopped | last_block


@torch.inference_mode()
def decode_diffusion(model: Transformer, vocab: Vocab, prompts: list[list[int]], num_slots: list[int],
                     cfg: DecodeConfig | None = None, record_passes: bool = False,
                     budgets: list[int] | None = None) -> list[SequenceResult]:
    """Prefill, then passes of: forward, start fresh blocks where one was committed, select, decide,
    retire finished rows. ``record_passes``: each result's ``decided_at`` names the pass that decided
    each position (the prefill decides none; nor does a commit pass that is not fused)."""
    cfg = cfg or DecodeConfig()
    S = cfg.block_size
    budget = math.ceil(cfg.max_new_tokens / S) * S
    batch = Batch(model, vocab, prompts, num_slots, budget, block=S, record_passes=record_passes, budgets=budgets)
    st = BlockState.first(vocab, batch.prefill(), S, cfg.block_cache)
    steps_log: list[tuple[torch.Tensor, torch.Tensor]] = []  # per pass: (rows denoised, tokens each decided)
    gen = torch.Generator(device=batch.dev).manual_seed(cfg.seed) if cfg.temperature > 0 else None
    while True:
        logits, commit_last, fused = forward(batch, st, vocab, cfg.fuse_commit)
        denoise = torch.ones_like(st.committing) if fused else ~st.committing
        start_fresh_blocks(batch, st, commit_last)
        cand, unmask, belief = select(batch, st, logits, denoise, cfg, gen)
        decide(batch, st, cand, unmask, belief)
        steps_log.append((batch.alive[denoise], unmask[denoise].sum(1)))
        if cfg.causal_first_rank:
            st.rank1_causal = rank1_view(st, vocab)
        finished = finish_rows(batch, st, denoise, vocab, cfg.ignore_eos, budget)
        if bool(finished.any()):
            keep = batch.drop_finished(~finished)
            if keep.numel() == 0:
                break
            st.keep(keep)

    results = batch.results()
    for rows, counts in steps_log:  # read back once, after decoding, not once per pass
        for r, n in zip(rows.tolist(), counts.tolist(), strict=True):
            results[r].unmasked_per_step.append(n)
    return results
