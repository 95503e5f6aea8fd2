"""Helpers of the decoder tests: prompts of several candidate counts, and logits planted into passes."""

from dgr2.model.decoding import Batch
from dgr2.model.prompt import render_prompt

CANDIDATE_COUNTS = (1, 4, 7, 2, 9)


def batch_prompts(vocab, synth, n=5, ks=None):
    """Prompts of the first synthetic users, user ``i`` with ``ks[i]`` candidates (default: the counts
    1, 4, 7, 2, 9 in turn, K = 1 included) drawn from a different stretch of the catalog."""
    ids = synth.catalog.ids()
    ks = ks or [CANDIDATE_COUNTS[i % len(CANDIDATE_COUNTS)] for i in range(n)]
    users = list(synth.sequences)[: len(ks)]
    return [render_prompt(vocab, synth.catalog, synth.sequences[u][:-1], ids[3 * i: 3 * i + k])
            for i, (u, k) in enumerate(zip(users, ks, strict=True))]


def plant_answer_at_block_position_3(monkeypatch, vocab, then=None):
    """Patches ``Batch.logits``: the first pass puts ``<answer>`` at block position 3 (the output at 2
    predicts it); ``then(batch, block, out)`` edits every pass's output. Returns the list of calls
    (clear it to plant again in a new decode)."""
    logits, calls = Batch.logits, []

    def patched(self, block, causal=None, visible=None):
        out = logits(self, block, causal, visible)
        calls.append(1)
        if len(calls) == 1:
            out[:, 2, self.head.col(vocab.answer)] += 1e4
        if then is not None:
            then(self, block, out)
        return out

    monkeypatch.setattr(Batch, "logits", patched)
    return calls
