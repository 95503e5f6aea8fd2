"""Ranking metrics for one held-out target among K candidates (leave-one-out protocol).

``rank`` is 0-based (0 = the target was ranked first). NDCG with one relevant item is
``1 / log2(rank + 2)`` when ``rank < k``; HR@k is whether ``rank < k``; MRR is ``1 / (rank + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def ndcg_at(rank: int, k: int) -> float:
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0


def hr_at(rank: int, k: int) -> float:
    return 1.0 if rank < k else 0.0


def reciprocal_rank(rank: int) -> float:
    return 1.0 / (rank + 1)


def summarize(ranks: Sequence[int]) -> dict[str, float]:
    n = len(ranks)
    if n == 0:
        raise ValueError("no ranks to summarize")
    out = {
        "ndcg@5": sum(ndcg_at(r, 5) for r in ranks) / n,
        "ndcg@10": sum(ndcg_at(r, 10) for r in ranks) / n,
        "hr@1": sum(hr_at(r, 1) for r in ranks) / n,
        "hr@5": sum(hr_at(r, 5) for r in ranks) / n,
        "hr@10": sum(hr_at(r, 10) for r in ranks) / n,
        "mrr": sum(reciprocal_rank(r) for r in ranks) / n,
    }
    return {k: round(v, 6) for k, v in out.items()}


def format_mean_stderr(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± s.e.`` as the results tables print it; the mean alone for one value, ``n/a`` for none."""
    if not values:
        return "n/a"
    m, se = mean_and_stderr(values)
    return f"{m:.{digits}f} ± {se:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
