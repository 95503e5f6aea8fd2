"""The diffusion decoder's two ways to spend less per token: ``answer_claims`` (fewer passes in the
answer) and ``block_cache`` (fewer positions computed per pass)."""

import pytest
import torch
from decode_support import batch_prompts, plant_answer_at_block_position_3

from dgr2.model import diffusion_decoder
from dgr2.model.decoding import Batch, DecodeConfig
from dgr2.model.diffusion_decoder import decode_diffusion
from dgr2.model.prompt import parse_answer
from dgr2.model.slot_constraint import SlotState, apply_bans


def claimed_earlier(batch, cand: torch.Tensor, unmask: torch.Tensor, state: SlotState,
                    from_rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference rule of answer claims, ``(taken [b, S, Kmax], clash [b, S])``: per answer position
    from rank ``from_rank`` on, the slots that earlier answer positions unmask in this same pass (a
    ranking names each candidate once, so those are taken for it), and the unmasked positions whose own
    pick is among them."""
    slot = batch.slot_index[cand]  # [b, S]; kmax for tokens that are not slots
    hit = torch.zeros(*cand.shape, batch.kmax + 1, dtype=torch.int32, device=cand.device)
    hit.scatter_(2, slot[..., None], (unmask & state.in_answer)[..., None].int())
    claims = state.in_answer & (state.pos - state.ans_pos[:, None] >= from_rank)
    taken = ((hit.cumsum(dim=1) - hit) > 0) & claims[:, :, None]
    clash = unmask & taken.gather(2, slot[..., None])[..., 0]
    return taken[..., : batch.kmax], clash


def decode(model, vocab, ps, **cfg):
    return decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps], DecodeConfig(**cfg))


def record_rows(monkeypatch):
    """Patches ``Batch.logits`` to record, per pass, (positions computed per row, block width)."""
    logits, calls = Batch.logits, []

    def patched(self, block, causal=None, visible=None, query_index=None, block_len=None):
        calls.append((block.shape[1], block_len or block.shape[1]))
        return logits(self, block, causal, visible, query_index, block_len)

    monkeypatch.setattr(Batch, "logits", patched)
    return calls


# ----- answer_claims ---------------------------------------------------------------------------------

def test_an_answer_position_whose_pick_an_earlier_one_took_sees_it_as_taken():
    """``claimed_earlier``: per answer position, the slots earlier answer positions unmask in the same
    pass; trace positions and masked picks claim nothing."""
    from types import SimpleNamespace

    S, kmax = 6, 3
    slot_index = torch.full((20,), kmax)
    slot_index[torch.tensor([10, 11, 12])] = torch.arange(kmax)
    batch = SimpleNamespace(slot_index=slot_index, kmax=kmax)
    cand = torch.tensor([[10, 10, 11, 10, 12, 11]])
    unmask = torch.tensor([[True, True, True, True, False, True]])
    in_answer = torch.tensor([[False, True, True, True, True, True]])  # position 0 is trace
    state = SlotState(ban=torch.zeros(1, S, kmax, dtype=torch.bool), room=torch.ones(1, S, kmax, dtype=torch.long),
                      in_answer=in_answer, pos=torch.arange(S)[None], ans_pos=torch.tensor([0]),
                      think_end=torch.tensor([S]), past_decided=torch.ones(1, S, dtype=torch.bool), undecided=S)
    taken, clash = claimed_earlier(batch, cand, unmask, state)
    assert taken[0].int().tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]]
    # position 3 picked <c1>, which position 1 took; position 5 picked <c2>, which position 2 took;
    # position 4's pick is masked, so it clashes with nothing
    assert clash[0].tolist() == [False, False, False, True, False, True]
    # from rank 3 on (rank = position - <answer>'s, here 0): ranks 1 and 2 wait as without claims
    taken, clash = claimed_earlier(batch, cand, unmask, state, from_rank=3)
    assert not taken[0, :3].any() and taken[0, 3:].any()
    assert clash[0].tolist() == [False, False, False, True, False, True]
    taken, clash = claimed_earlier(batch, cand, unmask, state, from_rank=4)
    assert clash[0].tolist() == [False, False, False, False, False, True]


def plant_sure_ranking(monkeypatch, vocab):
    """The first pass puts ``<answer>`` at block position 3; every rank then prefers ``<c1>``, then
    ``<c2>``, ... by wide margins, so once ``<c1>`` is taken, ``<c2>`` is a sure pick, and so on."""

    def slots_in_order(batch, block, out):
        for i, slot in enumerate(vocab.slot_ids[:9]):
            out[:, :, batch.head.col(slot)] += 1e4 - 20.0 * i

    plant_answer_at_block_position_3(monkeypatch, vocab, then=slots_in_order)


def test_answer_claims_decide_a_sure_ranking_in_fewer_passes_with_the_same_answer(tiny, synth, monkeypatch):
    model, vocab = tiny
    plant_sure_ranking(monkeypatch, vocab)
    ps = batch_prompts(vocab, synth)
    runs = {claims: decode(model, vocab, ps, max_new_tokens=40, block_size=8, answer_claims=claims, claims_from_rank=1)
            for claims in (False, True)}
    for p, waits, claims in zip(ps, runs[False], runs[True], strict=True):
        assert claims.tokens == waits.tokens, (vocab.decode(claims.tokens), vocab.decode(waits.tokens))
        answer = parse_answer(vocab, claims.tokens, p.num_slots)
        assert answer.valid and answer.slots == list(range(p.num_slots)), vocab.decode(claims.tokens)
        if p.num_slots >= 3:  # waiting decides one rank a pass; claims decide the sure ones together
            assert claims.forward_passes < waits.forward_passes
        else:
            assert claims.forward_passes <= waits.forward_passes


def test_with_claims_from_rank_the_head_is_decided_before_the_tail(tiny, synth, monkeypatch):
    """``claims_from_rank=3``: ranks 1 and 2 are decided (one claim at a time, as without claims) before
    any later rank, which then claim together; the answer is the same ranking."""
    model, vocab = tiny
    plant_sure_ranking(monkeypatch, vocab)
    ps = batch_prompts(vocab, synth, ks=(7, 9))
    cfg = DecodeConfig(max_new_tokens=40, block_size=8, answer_claims=True, claims_from_rank=3)
    outs = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps], cfg, record_passes=True)
    for p, o in zip(ps, outs, strict=True):
        answer = parse_answer(vocab, o.tokens, p.num_slots)
        assert answer.valid and answer.slots == list(range(p.num_slots)), vocab.decode(o.tokens)
        a = o.tokens.index(vocab.answer)
        head, tail = o.decided_at[a + 1: a + 3], o.decided_at[a + 3: a + 1 + p.num_slots]
        assert max(head) < min(tail), (head, tail)


def claims_by_rounds(batch, shifted, eligible, state, cfg, cand_cols, conf, unmask):
    """The reference of ``claim_in_order``: re-select everything until no claiming rank picks a slot an
    earlier unmasked answer position took (each round settles the earliest clash)."""
    for _ in range(shifted.shape[1]):
        taken, clash = claimed_earlier(batch, batch.head.token(cand_cols), unmask, state, cfg.claims_from_rank)
        if not bool(clash.any()):
            break
        cand_cols, conf, unmask = diffusion_decoder.threshold_select(
            apply_bans(batch, shifted, state.ban | taken), eligible, state, cfg)
    return cand_cols, conf, unmask


@pytest.mark.parametrize("answer_threshold,from_rank", [(0.0, 1), (None, 1), (0.0, 3)])
def test_one_sweep_claims_decode_what_the_rounds_decode(model64, synth, monkeypatch, answer_threshold, from_rank):
    """Same tokens, same recorded scores, as the reference that re-selects once per settled clash; the
    logits are planted so that many ranks want the same candidates (long chains of clashes)."""
    model, vocab = model64
    logits = Batch.logits
    g = torch.Generator().manual_seed(0)

    def contested(self, block, causal=None, visible=None):
        out = logits(self, block, causal, visible)
        cols = self.head.cols(vocab.slot_ids[:9])
        out[:, :, cols] += 8.0 + 2.0 * torch.rand(out.shape[0], out.shape[1], 9, generator=g, dtype=out.dtype)
        return out

    monkeypatch.setattr(Batch, "logits", contested)
    ps = batch_prompts(vocab, synth)
    cfg = dict(max_new_tokens=48, block_size=8, threshold=0.5, answer_threshold=answer_threshold,
               answer_claims=True, claims_from_rank=from_rank)
    g.manual_seed(0)
    sweep = decode(model, vocab, ps, **cfg)
    g.manual_seed(0)
    waiting = decode(model, vocab, ps, **{**cfg, "answer_claims": False})
    if from_rank == 1:  # claims were made (from rank 3 the head waits first, which costs passes of its own)
        assert sum(o.forward_passes for o in sweep) < sum(o.forward_passes for o in waiting)
    monkeypatch.setattr(diffusion_decoder, "claim_in_order", claims_by_rounds)
    g.manual_seed(0)
    rounds = decode(model, vocab, ps, **cfg)
    for p, a, b in zip(ps, sweep, rounds, strict=True):
        assert a.tokens == b.tokens, (vocab.decode(a.tokens), vocab.decode(b.tokens))
        assert abs(a.slot_logprobs - b.slot_logprobs).max() < 1e-9
        assert parse_answer(vocab, a.tokens, p.num_slots).valid


@pytest.mark.parametrize("threshold", [0.9, 0.3])
def test_answer_claims_keep_every_answer_a_valid_ranking(tiny, synth, threshold):
    model, vocab = tiny
    ps = batch_prompts(vocab, synth)
    for p, o in zip(ps, decode(model, vocab, ps, max_new_tokens=48, block_size=8, threshold=threshold,
                               answer_threshold=0.0, answer_claims=True, claims_from_rank=1), strict=True):
        assert parse_answer(vocab, o.tokens, p.num_slots).valid, vocab.decode(o.tokens)


# ----- block_cache -----------------------------------------------------------------------------------

def test_block_cache_computes_fewer_positions_and_whole_blocks_when_they_commit(model64, synth, monkeypatch):
    """Every pass that commits (or starts a block) computes its whole window; denoising passes compute
    fewer positions once a block is under way; the answers stay valid rankings."""
    model, vocab = model64
    calls = record_rows(monkeypatch)
    ps = batch_prompts(vocab, synth, ks=(9,))
    out = decode(model, vocab, ps, max_new_tokens=48, block_size=8, threshold=0.6, block_cache=True)[0]
    assert parse_answer(vocab, out.tokens, 9).valid
    assert calls[0] == (8, 8)  # the first block's first pass: nothing cached yet
    assert all(computed == width for computed, width in calls if width == 16)  # fused commit passes
    assert any(computed < width for computed, width in calls)
    monkeypatch.undo()
    dense_calls = record_rows(monkeypatch)
    decode(model, vocab, ps, max_new_tokens=48, block_size=8, threshold=0.6)
    assert all(computed == width for computed, width in dense_calls)
    assert sum(c for c, _ in calls) < sum(c for c, _ in dense_calls)


def test_block_cache_decodes_a_row_alike_whatever_batch_it_is_in(model64, synth):
    """Rows of one batch need different positions; padding one row's list must not change what another
    row computes (float64, so only summation order could differ)."""
    model, vocab = model64
    ps = batch_prompts(vocab, synth)
    cfg = dict(max_new_tokens=40, block_size=8, threshold=0.3, block_cache=True)
    together = decode(model, vocab, ps, **cfg)
    for p, t in zip(ps, together, strict=True):
        alone = decode(model, vocab, [p], **cfg)[0]
        assert alone.tokens == t.tokens
        assert abs(alone.slot_logprobs - t.slot_logprobs).max() < 1e-9

