"""Leave-one-out splits, candidate lists and traces: protocol and no leakage."""

import json
import random
from collections import Counter

import pytest
import torch

from dgr2.model.tokenizer import MAX_SLOTS, TRACE_SLOT_USES, Vocab, build_tokenizer
from dgr2.recipe.data import DataError, UserView, eval_examples, load_dataset, train_example, train_prefixes
from dgr2.recipe.sft import TrainStream, encode, slot_exclusions
from dgr2.recipe.traces import (
    RULE_V3,
    RULE_V4,
    evidence,
    render_trace,
    rule_for,
    sft_target,
    trace_entries,
    trace_strengths,
)


def test_leave_one_out_and_candidates(synth):
    seqs, pool = synth.sequences, synth.item_ids
    test = eval_examples(seqs, pool, "test", num_candidates=20, neg_seed=7)
    valid = eval_examples(seqs, pool, "valid", num_candidates=20, neg_seed=7)
    for t, v in zip(test, valid, strict=True):
        seq = seqs[t.user]
        assert t.target == seq[-1] and t.history == seq[:-1]
        assert v.target == seq[-2] and v.history == seq[:-2]
        assert len(set(t.candidates)) == 20 and t.target in t.candidates
        assert not (set(t.candidates) - {t.target}) & set(seq), "a negative from the user's own sequence"
        assert set(t.candidates) - {t.target} == set(v.candidates) - {v.target}, "valid/test share negatives"
    again = eval_examples(seqs, pool, "test", num_candidates=20, neg_seed=7)
    assert [e.candidates for e in again] == [e.candidates for e in test]
    other = eval_examples(seqs, pool, "test", num_candidates=20, neg_seed=8)
    assert [e.candidates for e in other] != [e.candidates for e in test]


def test_sample_is_a_seeded_subset_of_the_all_users_lists(synth):
    seqs, pool = synth.sequences, synth.item_ids
    everyone = {e.user: e for e in eval_examples(seqs, pool, "test", num_candidates=20, neg_seed=7)}
    sample = eval_examples(seqs, pool, "test", num_candidates=20, neg_seed=7, sample=25)
    assert len(sample) == 25 == len({e.user for e in sample})
    assert all(e.candidates == everyone[e.user].candidates and e.target == everyone[e.user].target for e in sample)
    assert [e.user for e in sample] == [e.user for e in eval_examples(seqs, pool, "test", 20, 7, sample=25)]
    first = [e.user for e in eval_examples(seqs, pool, "test", 20, 7, limit=25)]
    assert [e.user for e in sample] != first  # not the head of the file
    with pytest.raises(ValueError, match="limit or sample"):
        eval_examples(seqs, pool, "test", 20, 7, limit=5, sample=5)
    with pytest.raises(ValueError, match="sample must be"):
        eval_examples(seqs, pool, "test", 20, 7, sample=len(seqs) + 1)


def test_target_slot_is_uniform(synth):
    seqs = {f"{u}-{i}": s for i in range(5) for u, s in synth.sequences.items()}
    slots = Counter(e.target_slot for e in eval_examples(seqs, synth.item_ids, "test", num_candidates=10))
    assert len(slots) == 10 and min(slots.values()) > 0.6 * len(seqs) / 10


def test_no_test_target_in_training_examples_or_traces(tiny, synth):
    """Training prefixes stop before the validation item, so neither the test nor the validation
    target of a user ever appears in that user's training histories, targets or traces."""
    _, vocab = tiny
    for user, cut in train_prefixes(synth.sequences):
        seq = synth.sequences[user]
        assert cut <= len(seq) - 3
        ex = train_example(synth.sequences, synth.item_ids, user, cut, 10, random.Random(cut))
        assert seq[-1] not in ex.history + [ex.target] and seq[-2] not in ex.history + [ex.target]
        if seq[-1] in ex.candidates:
            pytest.fail("the test target was drawn as a negative")
    stream = TrainStream(vocab, synth, num_candidates=10, trace_len=40, seed=0)
    for enc in stream.global_batch(0, 32):
        text = vocab.decode(enc.ids)
        prompt = vocab.decode(enc.ids[: enc.prompt_len])
        assert text.startswith(prompt)
    # the training popularity of a user's own items leaves that user out
    user = next(iter(synth.sequences))
    seq = synth.sequences[user]
    view = UserView(synth.catalog, synth.counts, synth.pairs, seq[:-2])
    assert view.get(seq[0]).pop <= synth.catalog.get(seq[0]).pop
    assert view.get(seq[-1]) == synth.catalog.get(seq[-1])  # the test target is not a training item


def test_trace_is_content_dependent_and_bounded(synth):
    ex = eval_examples(synth.sequences, synth.item_ids, "valid", num_candidates=15)[0]
    evs = evidence(synth.catalog, ex.history, ex.candidates)
    for n in (16, 32, 64):  # an entry is at most 10 tokens
        trace = render_trace(evs, n)
        assert 0 < len(trace) <= n
    trace, ranking = sft_target(evs, ex.target_slot, 64)
    assert ranking[0] == ex.target_slot and sorted(ranking) == list(range(15))
    assert any(t in trace for t in ("<r:brand>", "<r:cat>")), "synthetic users share brand/category"
    other = eval_examples(synth.sequences, synth.item_ids, "valid", num_candidates=15)[1]
    assert render_trace(evidence(synth.catalog, other.history, other.candidates), 64) != render_trace(evs, 64)


def test_answer_ties_are_shuffled_per_example_or_in_slot_order(synth):
    """The answer sorts by trace strength (unreached slots last) either way; equal strengths come in an order
    drawn from the example's seed, or in ascending slot, the order the trace lists them."""
    ex = eval_examples(synth.sequences, synth.item_ids, "valid", num_candidates=15)[0]
    evs = evidence(synth.catalog, ex.history, ex.candidates)
    level = trace_strengths(evs, trace_entries(evs, 64))
    strength = [level.get(k, -1) for k in range(15)]
    trace, by_slot = sft_target(evs, ex.target_slot, 64, ties="slot")
    rest = by_slot[1:]
    assert by_slot[0] == ex.target_slot and rest == sorted(rest, key=lambda k: (-strength[k], k))
    assert max(Counter(strength[k] for k in rest).values()) > 1, "the example needs a tie"
    shuffled = {tuple(sft_target(evs, ex.target_slot, 64, tie_seed=seed)[1]) for seed in range(10)}
    for order in shuffled:
        assert order[0] == ex.target_slot and sorted(order) == sorted(by_slot)
        assert [strength[k] for k in order[1:]] == [strength[k] for k in rest]  # ties move, strengths do not
    assert len(shuffled) > 1
    assert sft_target(evs, ex.target_slot, 64, tie_seed=3)[0] == trace  # the trace does not depend on ties


def test_trace_cites_the_link_window_of_the_prompt(synth):
    """Every linked candidate's trace entry repeats the prompt's ``<hI> <coN>`` (v4) or ``<hI>`` (v3):
    the trace is computable from the prompt, whichever version the vocabulary renders."""
    exs = eval_examples(synth.sequences, synth.item_ids, "valid", num_candidates=30)[:20]
    cited = 0
    for co_strength in (True, False):
        vocab = Vocab(build_tokenizer(synth.catalog, co_strength=co_strength))
        assert rule_for(vocab) is (RULE_V4 if co_strength else RULE_V3)
        for ex in exs:
            enc = encode(vocab, synth, ex, trace_len=400)
            t = vocab.decode(enc.ids).split()
            think = t.index("<think>")
            prompt, trace = t[:think], t[think + 1: t.index("</think>")]
            for k in range(30):
                slot = f"<c{k + 1}>"
                window = prompt[prompt.index(slot) + 1:]
                link = window[3:5] if window[4].startswith("<co") else window[3:4]
                entry = trace[trace.index(slot) + 1:]
                entry = entry[: entry.index(slot)]
                if link == ["<r:none>"]:
                    assert "<r:co>" not in entry
                else:
                    cited += 1
                    at = entry.index("<r:co>")
                    assert entry[at + 1: at + 1 + len(link)] == link and len(link) == 1 + co_strength
    assert cited > 20


def test_link_strength_raises_the_v4_score_only(synth):
    ex = eval_examples(synth.sequences, synth.item_ids, "valid", num_candidates=30)[0]
    hist, cand = ex.history[-1:], ex.candidates[0]

    class Windows:  # the catalog with one link of a given count
        get = synth.catalog.get

        def __init__(self, n):
            self.n = n

        def link_count(self, a, b):
            return self.n if (a, b) == (hist[0], cand) else 0

    v4 = [evidence(Windows(n), hist, [cand], RULE_V4)[0] for n in (0, 1, 4, 20)]
    v3 = [evidence(Windows(n), hist, [cand], RULE_V3)[0] for n in (0, 1, 4, 20)]
    assert v4[0].score < v4[1].score < v4[2].score < v4[3].score
    assert [e.co_token for e in v4] == [None, "<co1>", "<co3>", "<co6>"]
    assert v3[0].score < v3[1].score == v3[2].score == v3[3].score and all(e.co_token is None for e in v3)
    assert [e.level for e in v4] == [RULE_V4.level(e.score) for e in v4]


def test_missing_or_malformed_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("DGR2_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="DGR2_DATA_DIR"):
        load_dataset(None)
    with pytest.raises(DataError, match="holds no data set"):
        load_dataset(tmp_path)
    (tmp_path / "Beauty.txt").write_text("1 1 2 3\n2 x y z\n")
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps({"item_id": i, "asin": f"A{i}"}) for i in (1, 2, 3)))
    with pytest.raises(DataError, match="line 2"):
        load_dataset(tmp_path)


@pytest.mark.beauty
def test_beauty_protocol(beauty_dir):
    data = load_dataset(beauty_dir)
    assert len(data.sequences) == 22363 and len(data.catalog) == 12101
    assert sum(len(s) for s in data.sequences.values()) == 198502
    assert len(train_prefixes(data.sequences)) == 153776 - 22363  # every training item but the first of each user
    ex = eval_examples(data.sequences, data.item_ids, "test", limit=50)
    assert all(len(set(e.candidates)) == 100 for e in ex)
    enc = encode(Vocab(build_tokenizer(data.catalog)), data, ex[0])
    assert enc.prompt_len > 500  # 100 candidates of 6 tokens


def test_slot_exclusions_follow_the_decoder_rule(tiny, synth):
    """The vectorised exclusions equal a token-by-token reading of the rule: outside the request
    always banned; in the trace a slot is banned once named TRACE_SLOT_USES times; from <answer>
    on, every slot is open again and banned once named."""
    _, vocab = tiny
    stream = TrainStream(vocab, synth, num_candidates=10, trace_len=60, seed=3)
    for enc in stream.global_batch(0, 8):
        T = len(enc.ids) + 5  # padding rows keep only the request bans
        expected = torch.zeros(T, MAX_SLOTS, dtype=torch.bool)
        expected[:, enc.num_slots:] = True
        uses, limit = [0] * MAX_SLOTS, TRACE_SLOT_USES
        for t in range(enc.prompt_len, len(enc.ids)):
            if enc.ids[t] == vocab.answer:
                uses, limit = [0] * MAX_SLOTS, 1
            k = vocab.slot_of(enc.ids[t])
            if k is not None:
                uses[k] += 1
            expected[t] |= torch.tensor([u >= limit for u in uses])
        got = slot_exclusions(vocab, enc, T)
        assert torch.equal(got, expected)
        assert got[enc.prompt_len:len(enc.ids), :enc.num_slots].any()  # the rule did ban something
