"""Is ``relevance_score`` informative? What ``dgr2 eval --score-report FILE`` writes.

For each evaluated user it keeps the held-out item's rank in the decoded (guarded) order, the
served score at each of the first ``depth`` ranks, the held-out item's served score and raw expected
gain, and where the held-out item lands when the candidates are re-sorted by the raw per-candidate
expected gain (:func:`dgr2.model.engine.expected_gains`; ties keep the decoded order). The report
holds:

- ``by_rank``: for ranks 1..``depth``, how many users had the held-out item there (``hits``), the mean
  served score of the held-out item at that rank (``score_hit``), the mean served score of whatever
  other item sat at that rank (``score_miss``), the difference ``score_hit - score_miss`` with its
  standard error (``hit_minus_miss``, ``hit_minus_miss_se``) and the mean raw expected gain of the
  held-out item there (``gain_hit``). A score that carries the model's confidence has
  ``score_hit > score_miss`` at the same rank; one that were a function of the rank alone would
  have them equal.
- ``decoded`` / ``resorted``: the ranking metrics of the decoded order and of the re-sorted one, and
  ``resorted_minus_decoded``: their paired per-user difference with its standard error.
- ``monotone``: the share of responses whose raw expected gain rises somewhere down the decoded order
  (what clients saw before the monotone fit) and whose served score does (must be 0).
- ``by_top_score``: the users split into quartiles by the served score at rank 1, with each
  quartile's score range and metrics: whether a client could cut on the score.
- ``users``: the per-user figures the above are computed from (``rank``, ``resorted``, ``score``,
  ``gain``, ``top``), so other summaries can be drawn from the file without decoding again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgr2.model.engine import RankResult
from dgr2.recipe.evals.compare import PER_USER
from dgr2.recipe.metrics import mean_and_stderr, summarize


def resorted_order(result: RankResult) -> list[int]:
    """The candidates by descending raw expected gain; ties keep their decoded order."""
    gain = np.asarray(result.expected_gain, dtype=np.float64)
    pos = {k: p for p, k in enumerate(result.order)}
    return sorted(result.order, key=lambda k: (-gain[k], pos[k]))


@dataclass
class ScoreReport:
    depth: int = 10
    ranks: list[int] = field(default_factory=list)  # 0-based rank of the held-out item, decoded order
    resorted: list[int] = field(default_factory=list)  # 0-based rank of the held-out item, re-sorted
    target_score: list[float] = field(default_factory=list)
    target_gain: list[float] = field(default_factory=list)
    top_scores: list[list[float]] = field(default_factory=list)  # served scores at ranks 1..depth
    raw_rises: int = 0  # responses whose raw expected gain rises somewhere down the decoded order
    served_rises: int = 0  # responses whose served score does (the contract says never)

    def add(self, result: RankResult, target_slot: int) -> None:
        r = result.order.index(target_slot)
        self.ranks.append(r)
        self.resorted.append(resorted_order(result).index(target_slot))
        self.target_score.append(result.relevance[r])
        self.target_gain.append(result.expected_gain[target_slot])
        self.top_scores.append(list(result.relevance[: self.depth]))
        raw = np.asarray(result.expected_gain)[result.order]
        self.raw_rises += bool(np.any(np.diff(raw) > 0))
        self.served_rises += bool(np.any(np.diff(result.relevance) > 0))

    def summary(self) -> dict:
        n = len(self.ranks)
        if n == 0:
            raise ValueError("no users in the score report")
        by_rank = []
        for r in range(self.depth):
            hit = [self.target_score[i] for i in range(n) if self.ranks[i] == r]
            miss = [self.top_scores[i][r] for i in range(n) if self.ranks[i] != r and r < len(self.top_scores[i])]
            gap = se = None
            if len(hit) > 1 and len(miss) > 1:
                (mh, sh), (mm, sm) = mean_and_stderr(hit), mean_and_stderr(miss)
                gap, se = round(mh - mm, 6), round(float(np.hypot(sh, sm)), 6)
            by_rank.append({
                "rank": r + 1, "hits": len(hit), "hr": round(len(hit) / n, 6),
                "score_hit": _mean(hit), "score_miss": _mean(miss),
                "hit_minus_miss": gap, "hit_minus_miss_se": se,
                "gain_hit": _mean([self.target_gain[i] for i in range(n) if self.ranks[i] == r]),
            })
        diff = {}
        for name in ("ndcg@10", "hr@1", "mrr"):
            metric = PER_USER[name]
            d, se = mean_and_stderr([metric(b) - metric(a) for a, b in zip(self.ranks, self.resorted, strict=True)])
            diff[name] = {"diff": round(d, 6), "stderr": round(se, 6)}
        return {
            "n": n, "depth": self.depth, "by_rank": by_rank,
            "decoded": summarize(self.ranks), "resorted": summarize(self.resorted),
            "resorted_minus_decoded": diff,
            "resorted_same_rank": round(sum(a == b for a, b in zip(self.ranks, self.resorted, strict=True)) / n, 6),
            "monotone": {"raw_rises": round(self.raw_rises / n, 6), "served_rises": round(self.served_rises / n, 6)},
            "by_top_score": by_top_score(self.users()),
        }

    def users(self) -> list[dict]:
        return [{"rank": r, "resorted": s, "score": sc, "gain": round(g, 6), "top": t}
                for r, s, sc, g, t in zip(self.ranks, self.resorted, self.target_score, self.target_gain,
                                          self.top_scores, strict=True)]

    def write(self, path: str | os.PathLike, settings: dict) -> dict:
        out = {**self.summary(), "settings": settings, "users": self.users()}
        Path(path).write_text(dump_report(out))
        return out


def dump_report(report: dict) -> str:
    """The report as JSON: the summary indented, ``users`` one line per user."""
    head = {k: v for k, v in report.items() if k != "users"}
    users = ",\n    ".join(json.dumps(u) for u in report.get("users", []))
    return json.dumps(head, indent=2)[:-2] + f',\n  "users": [\n    {users}\n  ]\n}}\n'


def by_top_score(users: list[dict], groups: int = 4) -> list[dict]:
    """``users`` (as :meth:`ScoreReport.users` lists them) in ``groups`` equal groups by their served
    score at rank 1, lowest first (ties in user order), and the ranking metrics of each group."""
    ordered = sorted(users, key=lambda u: u["top"][0])
    out = []
    for part in np.array_split(np.arange(len(ordered)), groups):
        if len(part) == 0:
            continue
        members = [ordered[i] for i in part]
        out.append({"score_from": members[0]["top"][0], "score_to": members[-1]["top"][0], "n": len(members),
                    **{k: v for k, v in summarize([u["rank"] for u in members]).items()
                       if k in ("ndcg@10", "hr@1", "hr@10")}})
    return out


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


def markdown_table(report: dict) -> str:
    """The ``by_rank`` table as docs/results.md prints it."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["| rank | users with the held-out item there | its served score | served score of the other "
             "items there | difference | its raw expected gain |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in report["by_rank"]:
        gap = row["hit_minus_miss"]
        gap = "n/a" if gap is None else f"{gap:+.3f} ± {row['hit_minus_miss_se']:.3f}"
        lines.append(f"| {row['rank']} | {row['hits']} | {f(row['score_hit'])} | {f(row['score_miss'])} | {gap} | "
                     f"{f(row['gain_hit'])} |")
    return "\n".join(lines)


def markdown_top_score_table(report: dict) -> str:
    """The ``by_top_score`` table as docs/results.md prints it."""
    lines = ["| users by their rank-1 score | rank-1 score | users | HR@1 | HR@10 | NDCG@10 |",
             "|---|---|---:|---:|---:|---:|"]
    for i, row in enumerate(report["by_top_score"]):
        lines.append(f"| quartile {i + 1} | {row['score_from']:.3f} - {row['score_to']:.3f} | {row['n']} | "
                     f"{row['hr@1']:.3f} | {row['hr@10']:.3f} | {row['ndcg@10']:.4f} |")
    return "\n".join(lines)
