"""The pass record (``record_passes``): which forward pass decided each output position, for both decoders,
on batches whose rows differ in prompt length and K and stop at different times; recording it changes
nothing that is decoded, and only the requests that ask for it get it."""

import pytest

from dgr2.model.ar_decoder import decode_ar
from dgr2.model.decoding import DecodeConfig
from dgr2.model.diffusion_decoder import decode_diffusion
from dgr2.model.engine import DecodePasses, RankRequest, Reranker
from dgr2.model.prompt import render_prompt

DECODE = {"ar": decode_ar, "diffusion": decode_diffusion}


def prompts(vocab, synth, n=5):
    ids = synth.catalog.ids()
    users = list(synth.sequences)[:n]
    return [render_prompt(vocab, synth.catalog, synth.sequences[u][:-1], ids[3 * i: 3 * i + [1, 4, 7, 2, 9][i % 5]])
            for i, u in enumerate(users)]


def by_pass(out) -> list[list[int]]:
    return DecodePasses(1, out.decided_at, []).by_pass(out.forward_passes)


def run(decoder, tiny, synth, cfg, record):
    model, vocab = tiny
    ps = prompts(vocab, synth)
    return DECODE[decoder](model, vocab, [p.ids for p in ps], [p.num_slots for p in ps], cfg, record_passes=record)


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_recording_changes_nothing_that_is_decoded(tiny, synth, decoder):
    cfg = DecodeConfig(max_new_tokens=40, block_size=8)
    off, on = run(decoder, tiny, synth, cfg, False), run(decoder, tiny, synth, cfg, True)
    for a, b in zip(off, on, strict=True):
        assert a.tokens == b.tokens and a.forward_passes == b.forward_passes
        assert a.unmasked_per_step == b.unmasked_per_step
        assert a.decided_at is None  # nothing recorded, nothing allocated
        assert len(b.decided_at) == len(b.tokens)


def test_ar_decides_position_p_at_pass_p(tiny, synth):
    for out in run("ar", tiny, synth, DecodeConfig(max_new_tokens=30), True):
        assert out.decided_at == list(range(len(out.tokens)))  # the prefill decides position 0
        assert out.forward_passes == len(out.tokens)
        assert by_pass(out) == [[p] for p in range(len(out.tokens))]


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("block", [4, 8])
def test_diffusion_passes_decide_every_position_once_inside_one_block(tiny, synth, fuse, block):
    cfg = DecodeConfig(max_new_tokens=40, block_size=block, fuse_commit=fuse)
    outs = run("diffusion", tiny, synth, cfg, True)
    assert len({o.forward_passes for o in outs}) > 1  # rows stopped at different passes
    for out in outs:
        passes = by_pass(out)  # raises unless every position names a pass of this row
        assert sorted(p for ps in passes for p in ps) == list(range(len(out.tokens)))  # each position once
        assert passes[0] == []  # the prefill only predicts the first block's first position
        blocks = [{p // block for p in ps} for ps in passes if ps]
        assert all(len(b) == 1 for b in blocks)  # a pass unmasks inside one block
        assert [min(b) for b in blocks] == sorted(min(b) for b in blocks)  # blocks in order
        # every other pass that decides nothing commits a full block (unfused): the positions before it
        # fill whole blocks
        empty = [i for i, ps in enumerate(passes) if i > 0 and not ps]
        for i in empty:
            done = sum(len(ps) for ps in passes[:i])
            assert done > 0 and done % block == 0, (i, done)
        # forward passes = the prefill + the denoising passes (each decides >= 1 position) + unfused commits
        assert out.forward_passes == 1 + len(out.unmasked_per_step) + len(empty)
        assert all(n >= 1 for n in out.unmasked_per_step)
        decided = [len(ps) for ps in passes if ps]
        assert decided[:-1] == out.unmasked_per_step[:-1]  # the last may also decide positions after <eos>
    if not fuse:  # unfused, every commit is a pass of its own that decides nothing
        assert any(p == [] for out in outs for p in by_pass(out)[1:])


def test_only_the_requests_that_ask_get_their_passes(tiny, synth):
    model, vocab = tiny
    ids = synth.catalog.ids()
    users = list(synth.sequences)[:3]
    for decoder, block in (("ar", 1), ("diffusion", 8)):
        reqs = [RankRequest(synth.sequences[u][:-1], ids[i: i + 5], record_passes=i == 1) for i, u in enumerate(users)]
        rr = Reranker(model, vocab, synth.catalog, decoder, DecodeConfig(max_new_tokens=32, block_size=8))
        results = rr.rank(reqs)
        plain = rr.rank([RankRequest(r.history, r.candidates) for r in reqs])
        assert results[0].passes is None and results[2].passes is None
        rec = results[1].passes
        assert rec.block_size == block
        assert rec.tokens == [vocab.token(t) for t in vocab.ids(rec.tokens)] and len(rec.tokens) == len(rec.decided_at)
        assert len(rec.by_pass(results[1].forward_passes)) == results[1].forward_passes
        assert [r.order for r in results] == [r.order for r in plain]
        assert [r.reasoning for r in results] == [r.reasoning for r in plain]


def test_a_record_naming_a_pass_that_did_not_run_is_refused():
    with pytest.raises(ValueError, match="outside"):
        DecodePasses(1, [0, 1, 3], ["<c1>", "<c2>", "<eos>"]).by_pass(3)
    with pytest.raises(ValueError, match="outside"):
        DecodePasses(1, [-1], ["<eos>"]).by_pass(2)
