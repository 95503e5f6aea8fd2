"""``evaluate()`` end to end with re-rankers whose answer is known (an oracle and its reverse), and the
non-learned baselines' ranks worked out by hand on a five-item catalog."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest

from dgr2.model.catalog import Catalog, Item
from dgr2.model.decoding import DecodeConfig
from dgr2.model.engine import Reranker
from dgr2.recipe.data import Example, eval_examples
from dgr2.recipe.evaluate import baseline_ranks, evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class KnownAnswer(Reranker):
    """The tiny model decodes each request for real (so validity, passes and the trace are counted as
    usual), then the ranking is replaced: the target first (``oracle``) or last (``reversed``)."""

    def __init__(self, tiny, catalog, examples: list[Example], mode: str) -> None:
        model, vocab = tiny
        super().__init__(model, vocab, catalog, "ar", DecodeConfig(max_new_tokens=24))
        self.target = {tuple(e.candidates): e.target_slot for e in examples}
        self.mode = mode

    def rank(self, requests):
        results = super().rank(requests)
        for req, res in zip(requests, results, strict=True):
            t = self.target[tuple(req.candidates)]
            others = [k for k in range(len(req.candidates)) if k != t]
            res.order = [t, *others] if self.mode == "oracle" else [*others, t]
        return results


@pytest.fixture(scope="module")
def examples(synth) -> list[Example]:
    return eval_examples(synth.sequences, synth.item_ids, "test", num_candidates=6, limit=11)


def test_an_oracle_scores_one_on_every_metric(tiny, synth, examples):
    out = evaluate(KnownAnswer(tiny, synth.catalog, examples, "oracle"), examples, batch_size=4, progress=False)
    assert out["n"] == 11  # three batches (4 + 4 + 3), merged
    for name in ("ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10", "mrr"):
        assert out[name] == 1.0, (name, out)
    assert 0.0 <= out["valid_raw"] <= 1.0 and out["tokens_per_forward"] > 0


def test_the_reversed_oracle_ranks_every_target_last(tiny, synth, examples):
    """6 candidates, the target 6th: NDCG@10 = 1/log2(7), MRR = 1/6, HR@10 = 1, and 0 at cut-offs 1 and 5."""
    out = evaluate(KnownAnswer(tiny, synth.catalog, examples, "reversed"), examples, batch_size=4, progress=False)
    assert out["n"] == 11
    assert out["ndcg@10"] == pytest.approx(1 / math.log2(7), abs=1e-6)  # 0.356207
    assert out["mrr"] == pytest.approx(1 / 6, abs=1e-6)
    assert out["hr@10"] == 1.0 and out["hr@1"] == 0.0 and out["hr@5"] == 0.0 and out["ndcg@5"] == 0.0


# -------------------------------------------------------------------------- baselines, by hand
# history H2 (older: brand B, category y), H1 (most recent: brand A, category x, linked to C4 once)
CATALOG = Catalog([
    Item("H1", brand="A", category="x", links=("C4",), link_counts=(1,)),
    Item("H2", brand="B", category="y"),
    Item("C0", brand="B", category="z"),
    Item("C1", brand="A", category="x"),
    Item("C2", brand="C", category="y", pop=3),
    Item("C3", brand="D", category="w", pop=9),
    Item("C4"),
])
COUNTS = Counter({"C0": 5, "C1": 1, "C2": 5, "C3": 9})  # C4 never seen in training
SOURCE = SimpleNamespace(catalog=CATALOG, counts=COUNTS, rule=None)  # rule: no fitted one, v4
HISTORY = ["H2", "H1"]  # oldest first


def _example(candidates: list[str], target: str) -> Example:
    return Example("u", HISTORY, target, candidates)


def test_baseline_ranks_by_hand():
    """Evidence scores (v4: brand 5, category 1, link 4 x log(1 + 1 shared window), popularity 0.15 per
    bucket; a match with the I-th most recent history item weighs 1 / (1 + I)):
    C0 brand B of H2: 5/2 = 2.5;  C1 brand and category of H1: 5 + 1 = 6;  C2 category of H2 + pop 3:
    1/2 + 0.45 = 0.95;  C3 pop 9: 1.35;  C4 linked to H1: 4 log 2 = 2.77  ->  C1, C4, C0, C3, C2.
    v3 (brand 3, category 1, link 3, popularity 0.35): C0 1.5, C1 4, C2 1.55, C3 3.15, C4 3 -> C1, C3, C4, C2, C0.
    PopRec by training count, ties by slot: C3 9, C0 5, C2 5, C1 1, C4 0 -> C3, C0, C2, C1, C4."""
    cands = ["C0", "C1", "C2", "C3", "C4"]
    shuffled = ["C4", "C2", "C0", "C3", "C1"]  # the same items in other slots: ties now go to C2 before C0
    examples = [_example(cands, "C4"), _example(cands, "C2"), _example(cands, "C0"), _example(shuffled, "C0")]
    assert baseline_ranks("evidence", SOURCE, examples) == [1, 4, 2, 2]
    assert baseline_ranks("evidence-v3", SOURCE, examples) == [2, 3, 4, 4]
    assert baseline_ranks("pop", SOURCE, examples) == [4, 2, 1, 2]
