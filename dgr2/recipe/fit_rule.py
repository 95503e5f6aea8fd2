"""``dgr2 fit-rule``: fit the evidence rule's weights and strength levels on validation users; score
them on test users.

    dgr2 fit-rule --fit-users 4000 --test-users 4000 --test-seeds 12345,1

How ``recipe.traces.RULE_V4`` was chosen (prompt v4, 2026-11-27; docs/design.md, "Prompt"), and how a
new catalog gets its rule. For a uniform sample of validation users (``--sample`` semantics of ``dgr2
eval``) it takes each candidate's score terms from ``recipe.traces.evidence`` under rules that weigh
one term alone (popularity bucket; brand and category matches, recency-weighted; the most recent
link, times log of its ``<coN>`` floor), grid-searches the weights by NDCG@10 of the exact score,
then fits the level edges by coordinate ascent on NDCG@10 of level-sorted candidates with random
ties (what the SFT answer follows). It reports the fitted rule and, on test users it was not fitted
on, the exact and level-sorted NDCG@10 of the fitted rule, RULE_V4 and RULE_V3. The weighted sum of
the terms is checked against the rules' own scores on the first users. ``--out DATA/evidence-rule.json``
gives a catalog its own rule: AR training on that folder writes traces by it, and the checkpoint keeps
it (``ModelConfig.evidence_rule``) for every later stage and evaluation.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from dgr2.flags import at_least, positive_int
from dgr2.recipe.data import RULE_FILE, eval_examples, load_source
from dgr2.recipe.traces import RULE_V3, RULE_V4, EvidenceRule, evidence

# RULE_V4 came from brand 3-6, cat 0.5-1.5, co 1.5-4, pop 0.1-0.3; Toys' best sat on three of those bounds
GRID = {"brand": (1, 2, 3, 4, 5, 6), "cat": (0.5, 1, 1.5, 2, 3), "co": (1.5, 2, 3, 4, 6),
        "pop": (0.1, 0.15, 0.2, 0.3, 0.45, 0.6)}


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="data folder, any layout of docs/data.md (default: $DGR2_DATA_DIR)")
    p.add_argument("--synthetic", action="store_true", help="fit on the generated synthetic data instead")
    p.add_argument("--candidates", type=at_least(2), default=100, help="candidates per user: target + K-1 negatives")
    p.add_argument("--fit-users", type=positive_int, default=4000, help="validation users the rule is fitted on")
    p.add_argument("--fit-seed", type=int, default=12345, help="negative-sampling seed of the fitting lists")
    p.add_argument("--test-users", type=positive_int, default=4000, help="test users the rules are scored on")
    p.add_argument("--test-seeds", default="12345,1", help="negative-sampling seeds of the test lists")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines of text")
    p.add_argument("--out", default=None, metavar="FILE",
                   help=f"write the fitted rule here (JSON); as {RULE_FILE} in a data folder, the AR models "
                        "trained on that folder write their traces by it (docs/data.md)")


def fit_rule(data, candidates: int, fit_users: int, fit_seed: int, test_users: int,
             test_seeds: list[int]) -> dict:
    """The fitted rule and its NDCG@10 on the fitting users, and every rule's on each test seed."""
    rng = np.random.default_rng(0)
    fit = eval_examples(data.sequences, data.item_ids, "valid", candidates, fit_seed, sample=fit_users)
    comp, target = components(data, fit)
    for row, ex in enumerate(fit[:20]):  # the weighted sum of the terms is the rule's score
        for rule in (RULE_V4, RULE_V3):
            ref = [e.score for e in evidence(data.catalog, ex.history, ex.candidates, rule)]
            if not np.allclose(score({k: v[row: row + 1] for k, v in comp.items()}, rule)[0], ref):
                raise AssertionError("the score terms do not add up to recipe.traces.evidence's score")
    tie = rng.random(target.shape[:1] + (candidates,))

    def weighted(w) -> EvidenceRule:
        return EvidenceRule(**dict(zip(GRID, w, strict=True)), edges=(), co_strength=True)

    exact, w = max((ndcg10(score(comp, weighted(w)), target, tie), w) for w in itertools.product(*GRID.values()))
    weights = dict(zip(GRID, w, strict=True))
    edges, leveled = fit_edges(score(comp, EvidenceRule(**weights, edges=(), co_strength=True)), target, tie,
                               len(RULE_V4.edges))
    fitted = EvidenceRule(**weights, edges=edges, co_strength=True)
    out = {"rule": fitted.to_dict(),
           "fit": {"users": len(fit), "seed": fit_seed, "weights": weights, "edges": list(edges),
                   "exact_ndcg@10": round(exact, 4), "levels_ndcg@10": round(leveled, 4),
                   "rule_v4_exact_ndcg@10": round(ndcg10(score(comp, RULE_V4), target, tie), 4)}, "test": []}
    for seed in test_seeds:
        test = eval_examples(data.sequences, data.item_ids, "test", candidates, seed, sample=test_users)
        comp, target = components(data, test)
        tie = rng.random(target.shape[:1] + (candidates,))
        for name, rule in (("fitted", fitted), ("RULE_V4", RULE_V4), ("RULE_V3", RULE_V3)):
            s = score(comp, rule)
            out["test"].append({"users": len(test), "seed": seed, "rule": name,
                                "exact_ndcg@10": round(ndcg10(s, target, tie), 4),
                                "levels_ndcg@10": round(ndcg10(levels(s, rule.edges), target, tie), 4)})
    return out


def run(args: argparse.Namespace) -> int:
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise SystemExit(f"dgr2 fit-rule: --out {args.out}: its folder does not exist")
    data = load_source(args.data_dir, args.synthetic)
    out = fit_rule(data, args.candidates, args.fit_users, args.fit_seed, args.test_users,
                   [int(s) for s in args.test_seeds.split(",")])
    if args.out:
        Path(args.out).write_text(json.dumps(out["rule"], indent=2) + "\n")
    if args.json:
        print(json.dumps(out))
        return 0
    f = out["fit"]
    print(f"validation ({f['users']} users, seed {f['seed']}): weights {f['weights']}, "
          f"exact NDCG@10 {f['exact_ndcg@10']:.4f}")
    print(f"  fitted edges {tuple(f['edges'])}: level-sorted NDCG@10 {f['levels_ndcg@10']:.4f}")
    for t in out["test"]:
        print(f"test ({t['users']} users, seed {t['seed']}) {t['rule']:8s} exact {t['exact_ndcg@10']:.4f} "
              f"levels {t['levels_ndcg@10']:.4f}")
    return 0
