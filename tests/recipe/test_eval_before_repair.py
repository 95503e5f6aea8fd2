"""What an eval reports of the answers as decoded: NDCG@10 before the guard's repair (the target's
first place in the answer the model wrote, 0 when absent) and the trace lengths; left out when part of
a resumed eval was counted before they existed."""

import json
from dataclasses import replace

import pytest

from dgr2.model.decoding import DecodeConfig
from dgr2.model.engine import Reranker
from dgr2.model_store.init import new_model
from dgr2.recipe.data import eval_examples
from dgr2.recipe.evals.eval_tally import ResumeFile
from dgr2.recipe.evaluate import evaluate
from dgr2.recipe.metrics import ndcg_at


class Rewritten(Reranker):
    """Decodes for real, then replaces each answer as decoded: user i's target is written at place
    ``places[i]`` (None: left out), every other place holds a slot that is not the target."""

    def __init__(self, *args, places, **kwargs):
        super().__init__(*args, **kwargs)
        self.places, self.seen, self.traces = places, 0, []

    def rank(self, requests):
        out = []
        for req, res in zip(requests, super().rank(requests), strict=True):
            place, target = self.places[self.seen], self.targets[self.seen]
            other = next(k for k in range(len(req.candidates)) if k != target)
            slots = [other] * 12  # a duplicate-filled answer: what the guard repairs
            if place is not None:
                slots[place] = target
            out.append(replace(res, decoded_slots=slots))
            self.traces.append(len(res.reasoning.split()))
            self.seen += 1
        return out


@pytest.fixture()
def setup(synth, catalog):
    model, vocab = new_model(catalog, "tiny", seed=3)
    examples = eval_examples(synth.sequences, synth.item_ids, "test", num_candidates=6, neg_seed=5)[:6]
    places = [0, None, 3, 11, None, 1]

    def reranker():
        r = Rewritten(model, vocab, catalog, "ar", DecodeConfig(max_new_tokens=16), places=places)
        r.targets = [ex.target_slot for ex in examples]
        return r

    return reranker, examples, places


def test_ndcg_before_repair_and_trace_lengths_are_the_answers_as_decoded(setup):
    reranker, examples, places = setup
    r = reranker()
    out = evaluate(r, examples, batch_size=4, progress=False)
    expected = sum(ndcg_at(p, 10) for p in places if p is not None) / len(places)
    assert out["ndcg@10_before_repair"] == pytest.approx(expected, abs=1e-6)
    lengths = sorted(r.traces)
    assert out["trace_tokens"] == {"mean": pytest.approx(sum(lengths) / 6, abs=0.01), "min": lengths[0],
                                   "p5": lengths[0], "p50": lengths[3], "p95": lengths[5], "max": lengths[5]}


def test_a_resume_file_from_before_leaves_them_out(setup, tmp_path):
    reranker, examples, _ = setup
    path = tmp_path / "r.jsonl"
    resume = ResumeFile(path, {"run": "x"})
    evaluate(reranker(), examples[:4], batch_size=4, progress=False, resume=resume)
    head, record = path.read_text().splitlines()
    old = {k: v for k, v in json.loads(record).items() if k not in ("raw_ranks", "trace_tokens")}
    path.write_text(head + "\n" + json.dumps(old) + "\n")  # a batch counted before they existed
    out = evaluate(reranker(), examples, batch_size=4, progress=False, resume=resume)
    assert out["n"] == 6 and "ndcg@10_before_repair" not in out and "trace_tokens" not in out
