"""Fit the evidence rule's weights and strength levels on validation users; score them on test users.

    python scripts/fit_evidence_rule.py --fit-users 4000 --test-users 4000 --test-seeds 12345,1

How ``recipe.traces.RULE_V4`` was chosen (prompt v4, 2026-11-27). For a uniform sample of validation users
(``--sample`` semantics of ``dgr2 eval``) it takes each candidate's score terms from
``recipe.traces.evidence`` under rules that weigh one term alone (popularity bucket; brand and
category matches, recency-weighted; the most recent link, times log of its ``<coN>`` floor in v4),
grid-searches the weights by NDCG@10 of the exact score, then fits the level edges by coordinate
ascent on NDCG@10 of level-sorted candidates with random ties (what the SFT answer follows). It
prints the fitted rule and, on test users it was not fitted on, the exact and level-sorted NDCG@10
of the fitted rule, RULE_V4 and RULE_V3 (the weighted sum of the terms is checked against the
rules' own scores on the first users).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from dgr2.recipe.data import eval_examples, load_beauty
from dgr2.recipe.traces import RULE_V3, RULE_V4, EvidenceRule, evidence

GRID = {"brand": (3, 4, 5, 6), "cat": (0.5, 1, 1.5), "co": (1.5, 2, 3, 4), "pop": (0.1, 0.15, 0.2, 0.3)}


UNIT = {name: dict.fromkeys(("brand", "cat", "co", "pop"), 0.0) | {name: 1.0} for name in ("brand", "cat", "co", "pop")}
COMPONENTS = {**{name: EvidenceRule(**w, edges=(), co_strength=True) for name, w in UNIT.items()},
              "co_v3": EvidenceRule(**UNIT["co"], edges=(), co_strength=False)}


def components(data, examples) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``[users, K]`` arrays of each score term (``recipe.traces.evidence`` under a rule weighing that
    term alone; the score is linear in the weights), and the targets' slots."""
    out = {name: np.array([[e.score for e in evidence(data.catalog, ex.history, ex.candidates, rule)]
                           for ex in examples]) for name, rule in COMPONENTS.items()}
    return out, np.array([ex.target_slot for ex in examples])


def score(comp, rule: EvidenceRule) -> np.ndarray:
    co = comp["co"] if rule.co_strength else comp["co_v3"]
    return rule.pop * comp["pop"] + rule.brand * comp["brand"] + rule.cat * comp["cat"] + rule.co * co


def ndcg10(s: np.ndarray, target: np.ndarray, tie: np.ndarray) -> float:
    rows = np.arange(len(target))
    t, tt = s[rows, target][:, None], tie[rows, target][:, None]
    rank = (s > t).sum(1) + ((s == t) & (tie < tt)).sum(1)
    return float(np.where(rank < 10, 1 / np.log2(rank + 2), 0).mean())


def levels(s: np.ndarray, edges) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), s, side="right")


def fit_edges(s, target, tie, n_edges: int, sweeps: int = 3) -> tuple[tuple[float, ...], float]:
    """Coordinate ascent from the targets' score deciles, each edge over 23 points between its neighbours."""
    edges = np.unique(np.quantile(s[np.arange(len(target)), target], np.linspace(0.1, 0.9, n_edges)))
    best = ndcg10(levels(s, edges), target, tie)
    for _ in range(sweeps):
        for i in range(len(edges)):
            lo = edges[i - 1] if i else s.min()
            hi = edges[i + 1] if i + 1 < len(edges) else s.max()
            for x in np.linspace(lo, hi, 25)[1:-1]:
                trial = edges.copy()
                trial[i] = x
                v = ndcg10(levels(s, trial), target, tie)
                if v > best:
                    best, edges = v, trial
    return tuple(round(float(e), 2) for e in edges), best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fit-users", type=int, default=4000)
    p.add_argument("--fit-seed", type=int, default=12345, help="negative-sampling seed of the fitting lists")
    p.add_argument("--test-users", type=int, default=4000)
    p.add_argument("--test-seeds", default="12345,1")
    args = p.parse_args()
    data = load_beauty(args.data_dir)
    rng = np.random.default_rng(0)

    fit = eval_examples(data.sequences, data.item_ids, "valid", 100, args.fit_seed, sample=args.fit_users)
    comp, target = components(data, fit)
    for row, ex in enumerate(fit[:20]):  # the weighted sum of the terms is the rule's score
        for rule in (RULE_V4, RULE_V3):
            ref = [e.score for e in evidence(data.catalog, ex.history, ex.candidates, rule)]
            assert np.allclose(score({k: v[row: row + 1] for k, v in comp.items()}, rule)[0], ref)
    tie = rng.random((len(target), 100))

    def weighted(w) -> EvidenceRule:
        return EvidenceRule(**dict(zip(GRID, w, strict=True)), edges=(), co_strength=True)

    best = max((ndcg10(score(comp, weighted(w)), target, tie), w) for w in itertools.product(*GRID.values()))
    weights = dict(zip(GRID, best[1], strict=True))
    print(f"validation ({len(fit)} users, seed {args.fit_seed}): weights {weights}, exact NDCG@10 {best[0]:.4f}")
    edges, lv = fit_edges(score(comp, EvidenceRule(**weights, edges=(), co_strength=True)), target, tie,
                          len(RULE_V4.edges))
    fitted = EvidenceRule(**weights, edges=edges, co_strength=True)
    print(f"  fitted edges {edges}: level-sorted NDCG@10 {lv:.4f}")

    for seed in (int(s) for s in args.test_seeds.split(",")):
        test = eval_examples(data.sequences, data.item_ids, "test", 100, seed, sample=args.test_users)
        comp, target = components(data, test)
        tie = rng.random((len(target), 100))
        for name, rule in (("fitted", fitted), ("RULE_V4", RULE_V4), ("RULE_V3", RULE_V3)):
            s = score(comp, rule)
            print(f"test ({len(test)} users, seed {seed}) {name:8s} exact {ndcg10(s, target, tie):.4f} "
                  f"levels {ndcg10(levels(s, rule.edges), target, tie):.4f}")


if __name__ == "__main__":
    main()
