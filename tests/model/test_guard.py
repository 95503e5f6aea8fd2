"""The guard always returns a permutation of exactly the K candidates and reports what was wrong."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dgr2.model.guard import greedy_repair, guard, hungarian_repair, rankgpt_repair
from dgr2.model.prompt import parse_answer


def is_perm(order, K):
    return sorted(order) == list(range(K))


@st.composite
def decoded(draw):
    """Any continuation over a small alphabet of slot, structure and trace tokens, any K."""
    K = draw(st.integers(1, 12))
    alphabet = [f"<c{k}>" for k in range(1, 16)] + ["<answer>", "</answer>", "<eos>", "<r:cat>", "<mask>"]
    tokens = draw(st.lists(st.sampled_from(alphabet), max_size=40))
    if draw(st.booleans()):  # well-formed shell around an arbitrary body, so all kinds occur
        body = draw(st.lists(st.sampled_from(alphabet[:15]), max_size=16))
        tokens = ["<r:cat>", "<answer>", *body, "</answer>", "<eos>"]
    scores = draw(st.sampled_from(["random", "nan", "none", "neginf"]))
    return K, tokens, scores


@settings(max_examples=300, deadline=None)
@given(decoded(), st.integers(0, 10_000))
def test_any_decode_becomes_a_permutation(tiny, case, seed):
    _, vocab = tiny
    K, tokens, scores = case
    ids = vocab.ids(tokens)
    rng = np.random.default_rng(seed)
    logp = None
    if scores != "none":
        logp = np.log(rng.dirichlet(np.ones(K), size=len(ids))) if ids else np.zeros((0, K))
        if scores == "nan" and ids:
            logp[rng.integers(len(ids))] = np.nan
        if scores == "neginf" and ids:
            logp[:, 0] = -np.inf
    parsed = parse_answer(vocab, ids, K)
    for method in ("hungarian", "greedy", "rankgpt"):
        order, report = guard(parsed, logp, method=method)
        assert is_perm(order, K), (method, tokens)
        assert report.valid_as_decoded == parsed.valid
        assert report.repaired == (not parsed.valid)
        assert (report.duplicates, report.missing, report.out_of_set, report.malformed) == (
            parsed.duplicates, parsed.missing, parsed.out_of_set, parsed.malformed)
        if parsed.valid:
            assert order == parsed.slots
    # the counts add up: each in-request slot is named once, or missing, or repeated
    assert len(set(parsed.slots)) + parsed.missing == K
    assert len(parsed.slots) - len(set(parsed.slots)) == parsed.duplicates


def test_hungarian_is_maximum_likelihood():
    rng = np.random.default_rng(1)
    for K in (2, 3, 5):
        logp = np.log(rng.dirichlet(np.ones(K), size=K))
        import itertools

        best = max(itertools.permutations(range(K)), key=lambda p: sum(logp[r, p[r]] for r in range(K)))
        assert hungarian_repair(logp) == list(best)


def test_repair_keeps_the_likely_slots_and_fixes_a_duplicate(tiny):
    _, vocab = tiny
    ids = vocab.ids(["<answer>", "<c2>", "<c2>", "<c3>", "</answer>"])
    # rank 1 was torn between c2 (decoded) and c1
    logp = np.log(np.array([
        [1 / 3, 1 / 3, 1 / 3],  # the <answer> position itself
        [0.05, 0.9, 0.05],
        [0.45, 0.5, 0.05],
        [0.1, 0.1, 0.8],
        [1 / 3, 1 / 3, 1 / 3],
    ]))
    order, report = guard(parse_answer(vocab, ids, 3), logp)
    assert report.repaired and report.duplicates == 1 and report.missing == 1
    assert order == [1, 0, 2]


def test_baselines_and_fallbacks():
    assert greedy_repair(np.full((3, 3), np.nan)) == [0, 1, 2]
    logp = np.log(np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]))
    assert greedy_repair(logp) == [1, 0, 2]
    from dgr2.model.prompt import AnswerParse

    parsed = AnswerParse(num_slots=4, slots=[2, 2, 0], start=0, duplicates=1, missing=2)
    assert rankgpt_repair(parsed) == [2, 0, 1, 3]


def test_valid_answer_passes_unchanged(tiny):
    _, vocab = tiny
    ids = vocab.ids(["<answer>", "<c3>", "<c1>", "<c2>", "</answer>"])
    logp = np.log(np.full((5, 3), 1 / 3))
    order, report = guard(parse_answer(vocab, ids, 3), logp)
    assert order == [2, 0, 1] and not report.repaired and report.method == "none"
