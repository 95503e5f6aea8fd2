"""dgr2 fit-rule: the grid search and level fit behind the evidence rule, on planted synthetic data."""

import json

import numpy as np

from dgr2.cli import main as cli
from dgr2.recipe.fit_rule import fit_edges, levels, ndcg10


def test_ndcg10_ranks_by_score_then_by_tie():
    s = np.array([[0.1, 0.9, 0.5], [0.5, 0.5, 0.5], [3.0, 2.0, 1.0]])
    tie = np.array([[0.0, 0.0, 0.0], [0.9, 0.1, 0.5], [0.0, 0.0, 0.0]])
    target = np.array([1, 0, 2])  # rank 0; rank 2 (two ties come first); rank 2
    expected = (1.0 + 1 / np.log2(4) + 1 / np.log2(4)) / 3
    assert ndcg10(s, target, tie) == np.float64(expected)
    far = np.tile(np.arange(20.0)[::-1], (1, 1))  # target last of 20: rank 19, outside the top 10
    assert ndcg10(far, np.array([19]), np.zeros((1, 20))) == 0.0


def test_fit_edges_never_does_worse_than_its_start():
    rng = np.random.default_rng(1)
    s = rng.random((200, 30))
    target = rng.integers(0, 30, 200)
    s[np.arange(200), target] += 0.3  # the target tends to score high
    tie = rng.random((200, 30))
    edges, best = fit_edges(s, target, tie, 4)
    assert list(edges) == sorted(edges)
    start = np.unique(np.quantile(s[np.arange(200), target], np.linspace(0.1, 0.9, 4)))
    assert best >= ndcg10(levels(s, start), target, tie)


def test_fit_rule_on_synthetic_data(capsys):
    args = ["fit-rule", "--synthetic", "--candidates", "10", "--fit-users", "60", "--test-users", "60",
            "--test-seeds", "1,2", "--json"]
    assert cli(args) == 0
    out = json.loads(capsys.readouterr().out)
    fit = out["fit"]
    assert set(fit["weights"]) == {"brand", "cat", "co", "pop"} and len(fit["edges"]) >= 1
    # RULE_V4's weights lie on the grid, so the fitted weights do at least as well where they were fitted
    assert fit["exact_ndcg@10"] >= fit["rule_v4_exact_ndcg@10"]
    assert [(t["seed"], t["rule"]) for t in out["test"]] == [
        (s, r) for s in (1, 2) for r in ("fitted", "RULE_V4", "RULE_V3")]
    # planted preferences: every rule beats a random order of 10 (NDCG@10 0.454 on average)
    assert all(t["exact_ndcg@10"] > 0.5 for t in out["test"])
