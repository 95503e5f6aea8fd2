"""Fit the evidence rule's weights and strength levels on validation users; score them on test users.

    python scripts/fit_evidence_rule.py --fit-users 4000 --test-users 4000 --test-seeds 12345,1

How ``recipe.traces.RULE_V4`` was chosen (ninth session). For a uniform sample of validation users
(``--sample`` semantics of ``dgr2 eval``) it extracts each candidate's score components (popularity
bucket; brand and category matches among the ``SCAN`` most recent history items, recency-weighted;
the most recent linked history item's recency weight and the log of its ``<coN>`` bucket floor),
grid-searches the weights by NDCG@10 of the exact score, then fits the level edges by coordinate
ascent on NDCG@10 of level-sorted candidates with random ties (what the SFT answer follows). It
prints the fitted rule and, on test users it was not fitted on, the exact and level-sorted NDCG@10
of the fitted rule, RULE_V4 and RULE_V3. The components are checked against ``recipe.traces.evidence``
on the first users, so the vectorised score is the rule the trainer uses.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np

from model.tokenizer import CO_FLOORS, MAX_HISTORY, co_bucket
from recipe.data import eval_examples, load_beauty
from recipe.traces import RULE_V3, RULE_V4, SCAN, EvidenceRule, evidence

GRID = {"brand": (3, 4, 5, 6), "cat": (0.5, 1, 1.5), "co": (1.5, 2, 3, 4), "pop": (0.1, 0.15, 0.2, 0.3)}


def components(data, examples) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``[users, K]`` arrays: pop, brand, cat, co (v4: weight x log floor), co_v3 (weight only); targets."""
    cat = data.catalog
    n, k = len(examples), len(examples[0].candidates)
    out = {name: np.zeros((n, k)) for name in ("pop", "brand", "cat", "co", "co_v3")}
    for u, ex in enumerate(examples):
        recent = list(ex.history)[::-1][:MAX_HISTORY]
        hist = [cat.get(h) for h in recent]
        for j, c in enumerate(ex.candidates):
            it = cat.get(c)
            out["pop"][u, j] = it.pop
            linked = False
            for r, (h, hi) in enumerate(zip(recent, hist, strict=True)):
                w = 1.0 / (1 + r)
                if r < SCAN:
                    out["brand"][u, j] += w * bool(it.brand and hi.brand == it.brand)
                    out["cat"][u, j] += w * bool(it.category and hi.category == it.category)
                if not linked and (windows := cat.link_count(h, c)):
                    linked = True
                    out["co_v3"][u, j] = w
                    out["co"][u, j] = w * math.log1p(CO_FLOORS[co_bucket(windows) - 1])
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
    for row, ex in enumerate(fit[:20]):  # the vectorised score is the trainer's rule
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
