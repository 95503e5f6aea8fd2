"""The two decoders agree on a model that is sure of its answer.

The tiny model runs for real (KV cache, block attention, passes counted), but its output logits are
planted: the output at continuation index ``c`` of row ``i`` puts all its mass on ``TARGET[i][c + 1]``
(the prefill's on ``TARGET[i][0]``), a grammatical completion: a short trace, ``</think> <answer>``, a
fixed ranking of the row's K slots, ``</answer> <eos>``. Each output knows its continuation index only
from the cache length the decoder keeps and the block it passes, so a decoder that puts a token at the
wrong position, commits a block at the wrong offset or mixes up rows after one finishes decodes
something else. AR (one token per pass) and block diffusion (several per pass, at several block sizes
and thresholds) must decode exactly the planted tokens and rank the same way, for a batch whose rows
differ in prompt length and in their number of candidates.
"""

from __future__ import annotations

import pytest
import torch

from dgr2.model.ar_decoder import decode_ar
from dgr2.model.decoding import Batch, DecodeConfig
from dgr2.model.diffusion_decoder import decode_diffusion
from dgr2.model.guard import guard
from dgr2.model.prompt import parse_answer, render_prompt
from dgr2.model.tokenizer import slot_token

SURE = 50.0  # the planted token's logit; every other output column is 0: probability 1 in float32
KS = [1, 4, 7, 2, 9]  # candidates per row (K = 1 included)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted_completion(vocab, k: int, row: int) -> tuple[list[int], list[int]]:
    """(tokens, ranking): a trace over up to 3 of the row's slots (each named twice, as the rule allows),
    then the answer: the K slots in a row-specific order."""
    ranking = [(row + 2 * r) % k for r in range(k)] if k % 2 else [(row + r) % k for r in range(k)][::-1]
    assert sorted(ranking) == list(range(k))
    trace = []
    for slot in ranking[::-1][:3]:
        trace += [slot_token(slot), "<r:co>", f"<h{1 + slot % 3}>", f"<v{(3 * slot) % 10}>", slot_token(slot)]
    tokens = [*trace, "</think>", "<answer>", *(slot_token(s) for s in ranking), "</answer>", "<eos>"]
    return vocab.ids(tokens), ranking


def plant(monkeypatch, targets: list[list[int]], eos: int) -> None:
    """Patch both decoders' only two model calls (``Batch.prefill`` and ``Batch.logits``): run the real pass,
    then return logits that spell ``targets[i]`` (``<eos>`` past its end) at the positions they predict."""
    real_logits, real_prefill = Batch.logits, Batch.prefill

    def forced(batch: Batch, first: list[int], width: int) -> torch.Tensor:
        """[rows, width, n_out]: row r's output j predicts continuation index first[r] + j."""
        out = torch.zeros(len(first), width, batch.head.ids.numel())
        for r, (i, c0) in enumerate(zip(batch.alive.tolist(), first, strict=True)):
            spelled = torch.tensor([*targets[i], eos])
            idx = (c0 + torch.arange(width)).clamp(max=len(targets[i]))
            out[r, torch.arange(width), batch.head.cols(spelled[idx])] = SURE
        return out.to(batch.dev)

    def logits(self, block, causal=None, visible=None):
        real_logits(self, block, causal, visible)
        # the block sits right after each row's committed prefix: its j-th output predicts the token after it
        first = [n - len(self.prompts[i]) + 1 for n, i in zip(self.cache.lens.tolist(), self.alive.tolist(),
                                                                 strict=True)]
        return forced(self, first, block.shape[1])

    def prefill(self):
        real_prefill(self)
        return forced(self, [0] * len(self.prompts), 1)[:, 0]

    monkeypatch.setattr(Batch, "logits", logits)
    monkeypatch.setattr(Batch, "prefill", prefill)


@pytest.fixture()
def planted(tiny, synth, monkeypatch):
    model, vocab = tiny
    ids = synth.catalog.ids()
    users = list(synth.sequences)[: len(KS)]
    # different history lengths and K per row
    prompts = [render_prompt(vocab, synth.catalog, synth.sequences[u][: 2 + 3 * i], ids[3 * i: 3 * i + k])
               for i, (u, k) in enumerate(zip(users, KS, strict=True))]
    assert len({len(p.ids) for p in prompts}) == len(prompts)
    completions = [planted_completion(vocab, k, i) for i, k in enumerate(KS)]
    plant(monkeypatch, [tokens for tokens, _ in completions], vocab.eos)
    return model, vocab, prompts, completions


def ranking(vocab, out, k: int) -> list[int]:
    parse = parse_answer(vocab, out.tokens, k)
    order, report = guard(parse, out.slot_logprobs)
    assert report.valid_as_decoded, report
    return order


CONFIGS = [  # (block size, threshold, answer threshold, fused commit)
    (1, 0.9, None, True),
    (3, 0.5, None, True),
    (4, 1.01, None, True),  # one token per pass
    (8, 0.9, None, True),
    (8, 0.9, None, False),
    (8, 0.0, None, True),  # every position at once, within what the grammar lets through
    (8, 1.01, 0.0, True),
    (32, 0.9, 0.0, True),  # one block holds a whole completion
]


@pytest.mark.parametrize("block_size,threshold,answer_threshold,fuse", CONFIGS)
def test_ar_and_diffusion_decode_the_planted_tokens_and_ranking(planted, block_size, threshold, answer_threshold,
                                                                fuse):
    model, vocab, prompts, completions = planted
    args = (model, vocab, [p.ids for p in prompts], [p.num_slots for p in prompts])
    ar = decode_ar(*args, DecodeConfig(max_new_tokens=40))
    diff = decode_diffusion(*args, DecodeConfig(max_new_tokens=40, block_size=block_size, threshold=threshold,
                                                answer_threshold=answer_threshold, fuse_commit=fuse))
    for p, (tokens, order), a, d in zip(prompts, completions, ar, diff, strict=True):
        assert a.tokens == tokens, (vocab.decode(a.tokens), vocab.decode(tokens))
        assert d.tokens == tokens, (vocab.decode(d.tokens), vocab.decode(tokens))
        assert ranking(vocab, a, p.num_slots) == ranking(vocab, d, p.num_slots) == order
        # both recorded the same (planted) beliefs, so the served relevance scores agree too
        assert torch.equal(torch.as_tensor(a.slot_logprobs), torch.as_tensor(d.slot_logprobs))
        assert a.forward_passes == len(tokens)  # AR: prefill, then one pass per token but the last
    if threshold < 1 and block_size >= 8:  # diffusion decided several tokens per pass
        assert sum(d.forward_passes for d in diff) < sum(a.forward_passes for a in ar)
