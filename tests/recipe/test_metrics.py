"""Ranking metrics against hand-computed values."""

import math

import pytest

from dgr2.recipe.metrics import hr_at, mean_and_stderr, ndcg_at, reciprocal_rank, summarize


def test_hand_computed_cases():
    assert ndcg_at(0, 10) == 1.0
    assert ndcg_at(1, 10) == pytest.approx(1 / math.log2(3))  # 0.6309
    assert ndcg_at(9, 10) == pytest.approx(1 / math.log2(11))
    assert ndcg_at(10, 10) == 0.0 and ndcg_at(5, 5) == 0.0
    assert hr_at(0, 1) == 1.0 and hr_at(1, 1) == 0.0 and hr_at(4, 5) == 1.0
    assert reciprocal_rank(0) == 1.0 and reciprocal_rank(3) == 0.25


def test_summary_of_three_users():
    s = summarize([0, 2, 20])  # ranked first, third, twenty-first
    assert s["hr@1"] == pytest.approx(1 / 3, abs=1e-6)
    assert s["hr@5"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["hr@10"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["ndcg@10"] == pytest.approx((1 + 0.5) / 3, abs=1e-6)  # 1/log2(4) = 0.5
    assert s["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 21) / 3, abs=1e-6)


def test_mean_and_stderr():
    m, se = mean_and_stderr([0.3, 0.32, 0.31])
    assert m == pytest.approx(0.31)
    assert se == pytest.approx(0.01 / math.sqrt(3))
    assert mean_and_stderr([0.5]) == (0.5, 0.0)
