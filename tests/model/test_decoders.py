"""Both decoders on the same tiny checkpoint and batch: valid rankings, honest counters, and the
batching must not change what a sequence decodes."""

import copy
from collections import Counter

import pytest
import torch
from decode_support import batch_prompts, plant_answer_at_block_position_3

from dgr2.model.ar_decoder import decode_ar
from dgr2.model.decoding import Batch, DecodeConfig
from dgr2.model.diffusion_decoder import decode_diffusion
from dgr2.model.engine import RankRequest, Reranker
from dgr2.model.prompt import parse_answer
from dgr2.model.tokenizer import TRACE_SLOT_USES


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_every_request_gets_a_valid_ranking(tiny, synth, decoder):
    model, vocab = tiny
    ids = synth.catalog.ids()
    reqs = [RankRequest(synth.sequences[u][:-1], ids[i: i + k])
            for i, (u, k) in enumerate(zip(list(synth.sequences)[:4], [1, 5, 9, 3], strict=True))]
    rr = Reranker(model, vocab, synth.catalog, decoder, DecodeConfig(max_new_tokens=24, block_size=8))
    for req, res in zip(reqs, rr.rank(reqs), strict=True):
        assert sorted(res.order) == list(range(len(req.candidates)))
        assert len(res.relevance) == len(req.candidates)
        assert all(0.0 <= s <= 1.0 for s in res.relevance)
        assert res.forward_passes >= 2 and res.generated_tokens >= 1
        assert res.report.valid_as_decoded  # both decoders enforce the answer grammar


def test_ar_never_names_a_slot_outside_the_request(tiny, synth):
    model, vocab = tiny
    ps = batch_prompts(vocab, synth, 3)  # K = 1, 4, 7: every slot token past K is out of the request
    outs = decode_ar(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps], DecodeConfig(max_new_tokens=40))
    for p, o in zip(ps, outs, strict=True):
        named = [vocab.slot_of(t) for t in o.tokens if vocab.slot_of(t) is not None]
        assert named and max(named) < p.num_slots


def test_ar_is_one_token_per_forward(tiny, synth):
    model, vocab = tiny
    ps = batch_prompts(vocab, synth)
    outs = decode_ar(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps], DecodeConfig(max_new_tokens=30))
    for p, o in zip(ps, outs, strict=True):
        assert o.forward_passes == len(o.tokens)  # prefill yields token 0, then one pass per token
        parsed = parse_answer(vocab, o.tokens, p.num_slots)
        assert parsed.valid and o.tokens[-1] == vocab.eos


def test_diffusion_threshold_above_one_is_one_token_per_step(tiny, synth):
    model, vocab = tiny
    ps = batch_prompts(vocab, synth, 3)
    S = 8
    for fuse in (False, True):
        outs = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                                DecodeConfig(max_new_tokens=24, block_size=S, threshold=1.01, fuse_commit=fuse))
        for o in outs:
            assert o.unmasked_per_step and set(o.unmasked_per_step) == {1}
            assert sum(o.unmasked_per_step) >= len(o.tokens)
            # prefill + one pass per token + (unfused) one commit pass per full block before the last;
            # the rows advance in lockstep, so every commit is fused with the next block's first step
            full_blocks = len(o.tokens) // S
            commits = 0 if fuse else max(0, full_blocks - (len(o.tokens) % S == 0))
            assert o.forward_passes == 1 + sum(o.unmasked_per_step) + commits


def test_diffusion_low_threshold_decodes_several_tokens_per_forward(tiny, synth):
    model, vocab = tiny
    ps = batch_prompts(vocab, synth, 2)
    for fuse in (False, True):
        outs = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                                DecodeConfig(max_new_tokens=32, block_size=16, threshold=0.0, ignore_eos=True,
                                             constrain_answer=False, fuse_commit=fuse))
        for o in outs:
            assert len(o.tokens) == 32
            assert o.unmasked_per_step == [16, 16]  # everything above threshold 0 goes at once
            # prefill, one step per block, and one commit between (fused into the second block's step)
            assert o.forward_passes == 1 + 2 + (0 if fuse else 1)


@pytest.mark.parametrize("decode", [decode_ar, decode_diffusion])
def test_constrained_decoders_name_a_slot_at_most_twice_in_the_trace_and_once_in_the_answer(tiny, synth, decode):
    """Threshold 0 makes every masked position compete in one pass: same-pass excess must be deferred."""
    model, vocab = tiny
    ps = batch_prompts(vocab, synth, 5)
    outs = decode(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                  DecodeConfig(max_new_tokens=48, block_size=16, threshold=0.0))
    for p, o in zip(ps, outs, strict=True):
        toks = list(o.tokens)
        cut = toks.index(vocab.answer) if vocab.answer in toks else len(toks)
        for section, uses in ((toks[:cut], TRACE_SLOT_USES), (toks[cut + 1:], 1)):
            slots = [vocab.slot_of(t) for t in section if vocab.slot_of(t) is not None]
            assert max(Counter(slots).values(), default=0) <= uses, (decode.__name__, section)
            assert all(k < p.num_slots for k in slots)


@pytest.mark.parametrize("decode", [decode_ar, decode_diffusion])
def test_batching_does_not_change_the_decode(model64, synth, decode):
    """Right padding, per-row cache lengths and dropping finished rows must be invisible per sequence."""
    model, vocab = model64
    ps = batch_prompts(vocab, synth)
    cfg = DecodeConfig(max_new_tokens=20, block_size=4, threshold=0.05)
    together = decode(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps], cfg)
    for p, t in zip(ps, together, strict=True):
        alone = decode(model, vocab, [p.ids], [p.num_slots], cfg)[0]
        assert alone.tokens == t.tokens
        assert torch.allclose(torch.as_tensor(alone.slot_logprobs), torch.as_tensor(t.slot_logprobs), atol=1e-5)


def test_ignore_eos_generates_exactly_the_budget(tiny, synth):
    model, vocab = tiny
    ps = batch_prompts(vocab, synth, 2)
    for decode in (decode_ar, decode_diffusion):
        outs = decode(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                      DecodeConfig(max_new_tokens=16, block_size=8, ignore_eos=True))
        assert [len(o.tokens) for o in outs] == [16, 16]


def test_constrained_ar_cannot_stop_before_its_answer(tiny, synth):
    """Planted: every logit 0 except <eos>, which is +-10 by the sign of one hidden unit, so an
    unconstrained trace would stop at about every other position; the answer must still come."""
    model, vocab = tiny
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.model.norm.weight.zero_()
        m.model.norm.weight[0] = 1.0
        m.lm_head.weight.zero_()
        m.lm_head.weight[vocab.eos, 0] = 10.0
    ids = synth.catalog.ids()
    users = list(synth.sequences)[:4]
    reqs = [RankRequest(synth.sequences[u][:-1], ids[5 * i: 5 * i + 5]) for i, u in enumerate(users)]
    rr = Reranker(m, vocab, synth.catalog, "ar", DecodeConfig(max_new_tokens=40))
    for res in rr.rank(reqs):
        assert res.report.valid_as_decoded, res.report


def test_answer_threshold_commits_the_answer_in_parallel(tiny, synth, monkeypatch):
    """A model that always wants ``<answer>``: with threshold > 1 the first pass decides one
    position (``<answer>``); the rest of the block lies in the answer section, where
    ``answer_threshold=0`` decides rank 1 in the next pass (it goes first) and the other positions in
    parallel from the pass after, the plain rule one per pass
    until the ``<eos>`` that the grammar puts after K slots and ``</answer>`` (at least K + 3 passes:
    forced ``<eos>`` positions past it may come first)."""
    model, vocab = tiny
    logits, prefill = Batch.logits, Batch.prefill

    def boost(self, out):
        out[..., self.head.col(vocab.answer)] += 1e4
        return out

    monkeypatch.setattr(Batch, "logits",
                        lambda self, block, **kw: boost(self, logits(self, block, **kw)))
    monkeypatch.setattr(Batch, "prefill", lambda self: boost(self, prefill(self)))
    ps = batch_prompts(vocab, synth, 2)
    S = 8
    steps = {}
    for answer_threshold in (None, 0.0):
        outs = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                                DecodeConfig(max_new_tokens=2 * S, block_size=S, threshold=1.01,
                                             answer_threshold=answer_threshold))
        steps[answer_threshold] = [o.unmasked_per_step for o in outs]
    for p, s in zip(ps, steps[None], strict=True):
        assert set(s) == {1} and p.num_slots + 3 <= len(s) <= S
    for fast, slow in zip(steps[0.0], steps[None], strict=True):
        # same-pass picks of one slot are deferred but one (the K=1 row has a single slot: all at once)
        assert fast[:2] == [1, 1] and fast[2] > 1 and len(fast) < len(slow)
    assert steps[0.0][0] == [1, 1, S - 2]


def test_answer_threshold_needs_the_answer_constraint():
    with pytest.raises(ValueError, match="constrain_answer"):
        DecodeConfig(answer_threshold=0.5, constrain_answer=False)


@pytest.mark.parametrize("junk", ["end_answer", "end_think", "eos"])
def test_diffusion_answer_follows_the_grammar_whatever_the_model_wants(tiny, synth, monkeypatch, junk):
    """A model that wants a structural token everywhere (which, unconstrained, ends or breaks the
    answer early): the decoded answer is still exactly K distinct in-request slots, ``</answer>``,
    ``<eos>``, with the plain threshold and with ``answer_threshold=0`` (everything in one pass)."""
    model, vocab = tiny
    logits, prefill = Batch.logits, Batch.prefill

    def boost(self, out):
        out[..., self.head.col(getattr(vocab, junk))] += 50.0
        return out

    monkeypatch.setattr(Batch, "logits",
                        lambda self, block, **kw: boost(self, logits(self, block, **kw)))
    monkeypatch.setattr(Batch, "prefill", lambda self: boost(self, prefill(self)))
    ps = batch_prompts(vocab, synth, 5)
    for answer_threshold in (None, 0.0):
        outs = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                                DecodeConfig(max_new_tokens=30, block_size=8, answer_threshold=answer_threshold))
        for p, o in zip(ps, outs, strict=True):
            toks = list(o.tokens)
            a = toks.index(vocab.answer)
            answer = [vocab.slot_of(t) for t in toks[a + 1: a + 1 + p.num_slots]]
            assert sorted(answer) == list(range(p.num_slots)), (junk, answer_threshold, vocab.decode(toks))
            assert toks[a + 1 + p.num_slots:] == [vocab.end_answer, vocab.eos]
            assert vocab.answer not in toks[:a] and vocab.end_answer not in toks[:a] and vocab.eos not in toks[:a]
            assert parse_answer(vocab, toks, p.num_slots).valid


def test_diffusion_answer_never_starts_before_a_decided_trace_token(tiny, synth, monkeypatch):
    """Planted: the first pass decides a trace token at block positions 3.., later passes want
    ``<answer>`` everywhere. An ``<answer>`` at positions 0-2 would leave those trace tokens inside the
    answer; it must go after them, and the answer stays valid."""
    model, vocab = tiny
    logits, prefill = Batch.logits, Batch.prefill
    calls = []
    trace_tok = vocab.id("<v0>")

    def patched(self, block, causal=None, visible=None):
        out = logits(self, block, causal, visible)
        calls.append(1)
        if len(calls) == 1:
            out[:, 2:, self.head.col(trace_tok)] += 1e4  # predicts block positions 3.. (next-token shift)
        else:
            out[..., self.head.col(vocab.answer)] += 1e4
        return out

    monkeypatch.setattr(Batch, "logits", patched)
    monkeypatch.setattr(Batch, "prefill", lambda self: prefill(self))
    ps = batch_prompts(vocab, synth, 5)
    outs = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                            DecodeConfig(max_new_tokens=40, block_size=8, answer_threshold=0.0))
    for p, o in zip(ps, outs, strict=True):
        toks = list(o.tokens)
        assert toks[3:8] == [trace_tok] * 5 and toks.index(vocab.answer) >= 8, vocab.decode(toks)
        assert parse_answer(vocab, toks, p.num_slots).valid, vocab.decode(toks)


@pytest.mark.parametrize("answer_threshold", [None, 0.0])
def test_diffusion_first_rank_is_not_claimed_by_a_surer_later_rank(tiny, synth, monkeypatch, answer_threshold):
    """Planted: ``<answer>`` at block position 3; rank 1 mildly prefers ``<c1>`` (below the threshold),
    every later rank is sure of ``<c1>``. A later rank must not take it first: rank 1 is decided
    before the others (at threshold 0.9 the sure ranks would unmask first) and, in one pass, the
    earlier rank keeps a slot (at answer threshold 0 all ranks unmask together)."""
    model, vocab = tiny

    def later_ranks_sure_of_c1(self, block, out):
        c1 = self.head.col(vocab.slot_ids[0])
        for row, a in (block[:, : out.shape[1]] == vocab.answer).nonzero().tolist():
            out[row, a, c1] += 3.0  # the output at <answer> predicts rank 1
            out[row, a + 1:, c1] += 1e4  # ranks 2.. (those in this block)

    plant_answer_at_block_position_3(monkeypatch, vocab, then=later_ranks_sure_of_c1)
    ps = batch_prompts(vocab, synth, 5)
    outs = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                            DecodeConfig(max_new_tokens=40, block_size=8, answer_threshold=answer_threshold))
    for p, o in zip(ps, outs, strict=True):
        toks = list(o.tokens)
        assert toks[3] == vocab.answer and toks[4] == vocab.slot_ids[0], vocab.decode(toks)
        assert parse_answer(vocab, toks, p.num_slots).valid, vocab.decode(toks)


def test_causal_first_rank_predicts_rank_1_from_the_ar_view(model64, synth, monkeypatch):
    """Planted ``<answer>`` at block position 3 (threshold 0: the trace before it is decided in the same
    pass). With ``causal_first_rank`` the slot log-probabilities recorded for rank 1 are those of a plain
    causal forward over the prompt and the decoded tokens up to ``<answer>`` (float64); without it,
    rank 1 is predicted with the masks after it in view, which differs."""
    model, vocab = model64
    calls = plant_answer_at_block_position_3(monkeypatch, vocab)
    ps = [p for p in batch_prompts(vocab, synth, 5) if p.num_slots >= 4]
    gap = {}
    for flag in (True, False):
        calls.clear()
        outs = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps],
                                DecodeConfig(max_new_tokens=40, block_size=8, threshold=0.0, causal_first_rank=flag))
        gap[flag] = []
        for p, o in zip(ps, outs, strict=True):
            toks = list(o.tokens)
            assert toks[3] == vocab.answer, vocab.decode(toks)
            with torch.no_grad():
                causal = model(torch.tensor([p.ids + toks[:4]]))[0, -1]
            want = torch.log_softmax(causal[torch.tensor(vocab.slot_ids[: p.num_slots])].float(), dim=-1)
            gap[flag].append(float((torch.from_numpy(o.slot_logprobs[4]) - want).abs().max()))
    assert max(gap[True]) < 1e-5, gap
    assert min(gap[False]) > 1e-4, gap


@pytest.mark.parametrize("threshold,answer_threshold", [(0.9, None), (0.5, 0.0), (1.01, None)])
def test_fused_commit_decodes_exactly_what_separate_commit_passes_decode(model64, synth, threshold, answer_threshold):
    """The two-block commit pass gives the outputs of a causal commit pass followed by a denoising
    pass (float64, so only summation order could differ): same tokens, same recorded slot
    log-probabilities, fewer passes. Rows differ in K and progress, so some passes mix committing
    and denoising rows (fused only when at least half commit)."""
    model, vocab = model64
    ps = batch_prompts(vocab, synth, 5)
    runs = {}
    for fuse in (False, True):
        cfg = DecodeConfig(max_new_tokens=40, block_size=8, threshold=threshold, answer_threshold=answer_threshold,
                           fuse_commit=fuse)
        runs[fuse] = decode_diffusion(model, vocab, [p.ids for p in ps], [p.num_slots for p in ps], cfg)
    fewer = 0
    for sep, fused in zip(runs[False], runs[True], strict=True):
        assert fused.tokens == sep.tokens and fused.unmasked_per_step == sep.unmasked_per_step
        assert abs(fused.slot_logprobs - sep.slot_logprobs).max() < 1e-9
        assert fused.forward_passes <= sep.forward_passes
        fewer += fused.forward_passes < sep.forward_passes
    assert fewer >= 1


def _slot_state(S, kmax, in_answer, room):
    from dgr2.model.slot_constraint import SlotState

    return SlotState(ban=torch.zeros(1, S, kmax, dtype=torch.bool), room=room, in_answer=in_answer,
                     pos=torch.arange(S)[None], ans_pos=torch.tensor([0]), think_end=torch.tensor([S]),
                     past_decided=torch.ones(1, S, dtype=torch.bool), undecided=S)


def test_same_pass_duplicates_the_earlier_rank_keeps_the_slot():
    """Two answer positions pick one slot with room for one: the earlier keeps it, however much surer
    the later one is (rank 1's spread-out guess at the held-out item must not lose it to rank 7's
    confident one); the later waits for the next pass."""
    from types import SimpleNamespace

    from dgr2.model.slot_constraint import keep_earliest

    S, kmax = 5, 3
    batch = SimpleNamespace(head=SimpleNamespace(token=lambda cols: cols), slot_cols=torch.tensor([10, 11, 12]))
    cand = torch.tensor([[11, 12, 11, 11, 10]])
    unmask = torch.tensor([[True, True, True, False, True]])
    state = _slot_state(S, kmax, torch.ones(1, S, dtype=torch.bool), torch.ones(1, S, kmax, dtype=torch.long))
    kept = keep_earliest(batch, cand, unmask, state)
    assert kept[0].tolist() == [True, True, False, False, True]
    # a slot with room 0 left is never picked (it is banned); a picked one always keeps its earliest pick
    assert kept.any()


def test_same_pass_duplicates_are_counted_per_section():
    """The trace names each slot twice (room 2) and the answer once: picks in the trace do not use up
    the answer's room, and the third trace pick of a slot is deferred."""
    from types import SimpleNamespace

    from dgr2.model.slot_constraint import keep_earliest

    S, kmax = 6, 2
    batch = SimpleNamespace(head=SimpleNamespace(token=lambda cols: cols), slot_cols=torch.tensor([10, 11]))
    cand = torch.tensor([[10, 10, 10, 10, 10, 11]])  # three trace picks of <c1>, then two answer picks
    in_answer = torch.tensor([[False, False, False, True, True, True]])
    room = torch.where(in_answer[:, :, None], 1, 2).expand(1, S, kmax).clone()
    kept = keep_earliest(batch, cand, torch.ones(1, S, dtype=torch.bool), _slot_state(S, kmax, in_answer, room))
    assert kept[0].tolist() == [True, True, False, True, False, True]


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_a_request_decodes_alike_whatever_its_batch_mates_ask(model64, synth, decoder):
    """Each request gets the completion budget of its own candidate count: batched with a request of
    more candidates, a request must not be given a longer trace (the budget decides when <answer> is
    forced)."""
    model, vocab = model64
    model.config = model.config.replace(trace_len=12)
    ids = synth.catalog.ids()
    users = list(synth.sequences)[:3]
    reqs = [RankRequest(synth.sequences[u][:-1], ids[: k]) for u, k in zip(users, (3, 9, 20), strict=True)]
    rr = Reranker(model, vocab, synth.catalog, decoder, DecodeConfig(max_new_tokens=200, block_size=8))
    together = rr.rank(reqs)
    for req, t in zip(reqs, together, strict=True):
        alone = rr.rank([req])[0]
        assert (alone.generated_tokens, alone.order) == (t.generated_tokens, t.order)
        assert alone.reasoning == t.reasoning
