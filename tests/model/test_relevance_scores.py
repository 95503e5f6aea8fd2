"""``relevance_score``: non-increasing down every ranking, in [0, 1], and still the model's confidence.

The served score is the model's expected DCG gain per candidate, read in the guarded order and made
non-increasing by antitonic regression (pool-adjacent-violators); the raw gains stay on the result.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgr2.model import engine
from dgr2.model.decoding import DecodeConfig, SequenceResult
from dgr2.model.engine import RankRequest, Reranker, expected_gains, monotone_decreasing, relevance_scores
from dgr2.model.guard import guard
from dgr2.model.prompt import parse_answer

unit = st.floats(0.0, 1.0, allow_nan=False)


def non_increasing(xs) -> bool:
    return all(a >= b for a, b in zip(xs, xs[1:], strict=False))


def runs(xs):
    """Maximal runs of equal values: (start, stop) pairs."""
    out, start = [], 0
    for i in range(1, len(xs) + 1):
        if i == len(xs) or xs[i] != xs[start]:
            out.append((start, i))
            start = i
    return out


# ------------------------------------------------------------------ the monotone transform
@settings(max_examples=500, deadline=None)
@given(st.lists(unit, max_size=60))
def test_monotone_fit_is_non_increasing_in_range_and_made_of_pooled_means(ys):
    out = monotone_decreasing(ys)
    assert out.shape == (len(ys),)
    assert non_increasing(list(out))
    assert all(0.0 <= v <= 1.0 for v in out)
    for a, b in runs(list(out)):  # each value is the mean of the inputs it pools ...
        assert out[a] == pytest.approx(np.mean(ys[a:b]), abs=1e-12)
        # ... and is the best constant there: no head of the run averages above it, or the run would
        # have been split (the optimality condition of pool-adjacent-violators)
        assert all(np.mean(ys[a:j]) <= out[a] + 1e-12 for j in range(a + 1, b + 1))
    assert float(np.sum(out)) == pytest.approx(float(np.sum(ys)), abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.lists(unit, max_size=60))
def test_monotone_fit_leaves_a_non_increasing_input_unchanged(ys):
    ys = sorted(ys, reverse=True)
    assert list(monotone_decreasing(ys)) == ys


@settings(max_examples=300, deadline=None)
@given(st.lists(unit, min_size=1, max_size=60))
def test_monotone_fit_keeps_the_order_of_the_pooled_means(ys):
    """Pooled values come out in the order of the input means they stand for: a later run never
    scores above an earlier one, and the first run's value is the highest head mean of the input."""
    out = monotone_decreasing(ys)
    values = [out[a] for a, _ in runs(list(out))]
    assert values == sorted(values, reverse=True)
    assert out[0] == pytest.approx(max(np.mean(ys[:j]) for j in range(1, len(ys) + 1)), abs=1e-12)
    assert out[-1] == pytest.approx(min(np.mean(ys[j:]) for j in range(len(ys))), abs=1e-12)


def test_monotone_fit_examples():
    assert list(monotone_decreasing([0.2, 0.6, 0.1])) == pytest.approx([0.4, 0.4, 0.1])
    assert list(monotone_decreasing([0.9, 0.3, 0.5, 0.4, 0.0])) == pytest.approx([0.9, 0.4, 0.4, 0.4, 0.0])
    assert list(monotone_decreasing([])) == []


# ------------------------------------------------------------------ scores of a parsed answer
def answer_tokens(vocab, slots):
    return vocab.ids(["<answer>", *[f"<c{k + 1}>" for k in slots], "</answer>", "<eos>"])


def scores_for(vocab, slots, logp, K):
    parse = parse_answer(vocab, answer_tokens(vocab, slots), K)
    order, report = guard(parse, logp)
    gains = expected_gains(parse, logp)
    return order, report, gains, relevance_scores(gains, order)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), st.integers(0, 10_000), st.booleans(), st.floats(0.05, 5.0))
def test_scores_of_any_answer_valid_or_repaired(tiny, K, seed, corrupt, concentration):
    """Dirichlet rows from flat to peaked; a corrupted answer (a duplicate, hence a missing slot) is
    repaired by the guard, and its scores are as monotone as a valid answer's."""
    _, vocab = tiny
    rng = np.random.default_rng(seed)
    slots = [int(k) for k in rng.permutation(K)]
    if corrupt and K > 1:
        slots[1] = slots[0]
    with np.errstate(divide="ignore"):  # a peaked Dirichlet row can hold exact zeros: log-prob -inf
        logp = np.log(rng.dirichlet(np.full(K, concentration), size=K + 3))
    order, report, gains, scores = scores_for(vocab, slots, logp, K)
    assert report.repaired == (corrupt and K > 1)
    assert sorted(order) == list(range(K))
    assert non_increasing(list(scores)) and all(0.0 <= s <= 1.0 for s in scores)
    assert len(gains) == K and all(0.0 <= g <= 1.0 for g in gains)


def test_scores_equal_the_expected_gains_when_those_already_decrease(tiny):
    _, vocab = tiny
    K = 5
    logp = np.log(np.full((K + 3, K), 0.02))  # rank r put 0.92 on slot order[r]
    slots = [3, 0, 4, 1, 2]
    for r, k in enumerate(slots):
        logp[1 + r, k] = np.log(0.92)
    order, _, gains, scores = scores_for(vocab, slots, logp, K)
    assert order == slots
    assert non_increasing(list(gains[order]))
    assert list(scores) == list(gains[order])


def test_scores_pool_where_the_expected_gains_rise(tiny):
    """Rank 2's candidate has more expected gain than rank 1's: the two share its mean, the rest stay."""
    _, vocab = tiny
    K = 4
    P = np.array([[0.4, 0.3, 0.2, 0.1],
                  [0.6, 0.1, 0.2, 0.1],  # the decoder put slot 1 at rank 2, yet slot 0 is the more likely
                  [0.0, 0.0, 0.5, 0.5],
                  [0.0, 0.6, 0.1, 0.3]])
    logp = np.full((K + 3, K), -np.inf)
    with np.errstate(divide="ignore"):
        logp[1: 1 + K] = np.log(P)
    order, _, gains, scores = scores_for(vocab, [1, 0, 2, 3], logp, K)
    raw = gains[order]
    assert raw[1] > raw[0]  # the issue: a score that rises down the ranking
    assert scores[0] == scores[1] == pytest.approx((raw[0] + raw[1]) / 2)
    assert non_increasing(list(scores))


def test_scores_carry_the_confidence_of_the_decode(tiny):
    """Same answer, same rank: a sure decode and an unsure one get different scores."""
    _, vocab = tiny
    K = 6
    slots = list(range(K))
    sure = np.log(np.full((K + 3, K), 0.01))
    unsure = np.log(np.full((K + 3, K), 0.1))
    for r in range(K):
        sure[1 + r, r] = np.log(0.95)
        unsure[1 + r, r] = np.log(0.5)
    s_sure = scores_for(vocab, slots, sure, K)[3]
    s_unsure = scores_for(vocab, slots, unsure, K)[3]
    assert s_sure[0] > s_unsure[0] + 0.2
    assert not np.allclose(s_sure, s_unsure)


def test_a_missing_answer_scores_flat(tiny):
    """No <answer> at all: every rank is uniform over the slots, so every candidate scores the same."""
    _, vocab = tiny
    K = 4
    parse = parse_answer(vocab, vocab.ids(["<r:cat>", "<eos>"]), K)
    order, report = guard(parse, None)
    scores = relevance_scores(expected_gains(parse, None), order)
    assert report.repaired and len(set(scores)) == 1 and 0.0 < scores[0] < 1.0


# ------------------------------------------------------------------ the engine, both decoders
def requests_for(synth, n=4):
    ids = synth.catalog.ids()
    users = list(synth.sequences)[:n]
    return [RankRequest(synth.sequences[u][:-1], ids[2 * i: 2 * i + k])
            for i, (u, k) in enumerate(zip(users, [1, 5, 9, 12][:n], strict=True))]


def check_result(res, K):
    assert sorted(res.order) == list(range(K))
    assert len(res.relevance) == len(res.expected_gain) == K
    assert non_increasing(res.relevance) and all(0.0 <= s <= 1.0 for s in res.relevance)
    want = relevance_scores(np.asarray(res.expected_gain), res.order)
    assert res.relevance == pytest.approx(list(want), abs=1e-6)


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_engine_scores_never_rise_on_either_decoder(tiny, synth, decoder):
    model, vocab = tiny
    reqs = requests_for(synth)
    rr = Reranker(model, vocab, synth.catalog, decoder, DecodeConfig(max_new_tokens=32, block_size=8))
    results = rr.rank(reqs)
    for req, res in zip(reqs, results, strict=True):
        check_result(res, len(req.candidates))
    # this model's raw expected gains do rise down some ranking, so the monotone fit is exercised
    assert any(np.any(np.diff(np.asarray(r.expected_gain)[r.order]) > 0) for r in results)
    # the score is not a function of the rank: same K, different requests, different scores
    a, b = rr.rank([reqs[-1], RankRequest(reqs[0].history, list(reversed(reqs[-1].candidates)))])
    assert a.relevance != b.relevance


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_engine_scores_never_rise_on_repaired_answers(tiny, synth, decoder, damage_rank_two):
    """Every answer damaged after decoding (its second slot made a copy of the first): the guard
    repairs it, and the scores of the repaired order are as monotone."""
    model, vocab = tiny
    damage_rank_two(decoder, vocab)
    reqs = requests_for(synth)
    results = Reranker(model, vocab, synth.catalog, decoder, DecodeConfig(max_new_tokens=40, block_size=8)).rank(reqs)
    for req, res in zip(reqs, results, strict=True):
        check_result(res, len(req.candidates))
        assert res.report.repaired == (len(req.candidates) > 1)


def test_engine_scores_with_a_cut_answer(tiny, synth, monkeypatch):
    """A decode that stops inside the answer: the unwritten ranks count as uniform, still monotone."""
    model, vocab = tiny

    def cut(model, vocab, prompts, num_slots, cfg, **_):
        outs = []
        for K in num_slots:
            toks = vocab.ids(["<r:cat>", "</think>", "<answer>", "<c1>"])
            outs.append(SequenceResult(toks, np.log(np.full((len(toks), K), 1.0 / K)), forward_passes=len(toks)))
        return outs

    monkeypatch.setitem(engine.DECODE_FUNCTIONS, "ar", cut)
    reqs = requests_for(synth)
    for req, res in zip(reqs, Reranker(model, vocab, synth.catalog, "ar").rank(reqs), strict=True):
        check_result(res, len(req.candidates))
        assert res.report.malformed
