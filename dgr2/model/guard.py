"""The permutation-validity guard: every response is a ranking of exactly the candidates sent.

Input: the parsed answer (:func:`model.prompt.parse_answer`) and the log-probabilities of the answer
positions over the request's K slots (rank position x slot, from :func:`kernels.answer_scores`).
A valid answer passes through unchanged. An invalid one is repaired by the maximum-likelihood
assignment of slots to rank positions (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``),
with a greedy fallback when the matrix cannot be solved. ``rankgpt_repair`` (drop duplicates and
out-of-set ids, append the missing ones in input order; RankGPT, Sun et al. 2023) is kept as a
named baseline to compare against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from dgr2.model.prompt import AnswerParse

log = logging.getLogger("dgr2.guard")
_TIE = 1e-6  # cost nudge: where the matrix says nothing, keep the input order (rank r <- slot r)


@dataclass
class GuardReport:
    valid_as_decoded: bool
    repaired: bool
    duplicates: int
    missing: int
    out_of_set: int
    malformed: bool
    method: str  # "none" | "hungarian" | "greedy" | "rankgpt"

    def faults(self) -> dict[str, bool]:
        """Which kinds of fault the decoded answer had, by the names of :data:`INVALID_KINDS`."""
        return {kind: bool(getattr(self, kind)) for kind in INVALID_KINDS}


# the kinds of invalid answer, as every report names them (API, metrics label, eval results)
INVALID_KINDS = ("duplicates", "missing", "out_of_set", "malformed")


def answer_matrix(parse: AnswerParse, position_logprobs: np.ndarray | None) -> np.ndarray:
    """The K x K (rank position x slot) log-probability matrix of an answer.

    ``position_logprobs`` holds one row per continuation position (``[T, >=K]``); rank ``r`` reads
    row ``start + 1 + r``. Ranks with no decoded row (answer cut short, no ``<answer>``) get zeros:
    no evidence, so the assignment fills them by the tie-break (input order).
    """
    K = parse.num_slots
    M = np.zeros((K, K), dtype=np.float64)
    if position_logprobs is None or parse.start is None:
        return M
    rows = np.asarray(position_logprobs, dtype=np.float64)[parse.start + 1: parse.start + 1 + K, :K]
    M[: len(rows)] = rows
    return M


def hungarian_repair(logprobs: np.ndarray) -> list[int]:
    """Maximum-likelihood permutation: rank r gets slot perm[r], maximising sum of logprobs[r, perm[r]]."""
    K = logprobs.shape[0]
    ranks = np.arange(K)
    cost = -np.nan_to_num(logprobs, nan=-1e9, neginf=-1e9, posinf=1e9) + _TIE * np.abs(ranks[:, None] - ranks[None, :])
    rows, cols = linear_sum_assignment(cost)
    return [int(c) for _, c in sorted(zip(rows, cols, strict=True))]


def greedy_repair(logprobs: np.ndarray) -> list[int]:
    """Rank by rank, the most likely slot not yet used (ties and NaN: input order)."""
    K = logprobs.shape[0]
    scores = np.nan_to_num(np.asarray(logprobs, dtype=np.float64), nan=-np.inf)
    used = np.zeros(K, dtype=bool)
    perm = []
    for r in range(K):
        row = np.where(used, -np.inf, scores[r] - _TIE * np.arange(K))
        k = int(np.argmax(row)) if np.isfinite(row).any() else int(np.flatnonzero(~used)[0])
        used[k] = True
        perm.append(k)
    return perm


def rankgpt_repair(parse: AnswerParse) -> list[int]:
    """Baseline: keep first occurrences in decoded order, then append missing slots in input order."""
    seen = list(dict.fromkeys(parse.slots))
    return seen + [k for k in range(parse.num_slots) if k not in set(seen)]


def guard(parse: AnswerParse, position_logprobs: np.ndarray | None = None,
          method: str = "hungarian") -> tuple[list[int], GuardReport]:
    """A valid permutation of ``range(parse.num_slots)`` (best first) and the report of what was wrong."""
    report = GuardReport(parse.valid, False, parse.duplicates, parse.missing, parse.out_of_set,
                         parse.malformed, "none")
    if parse.valid:
        return list(parse.slots), report
    report.repaired = True
    if method == "rankgpt":
        report.method = "rankgpt"
        return rankgpt_repair(parse), report
    M = answer_matrix(parse, position_logprobs)
    if method == "greedy":
        report.method = "greedy"
        return greedy_repair(M), report
    if method != "hungarian":
        raise ValueError(f"unknown repair method {method!r}")
    try:
        perm, report.method = hungarian_repair(M), "hungarian"
    except ValueError as e:  # e.g. an infeasible cost matrix; never let a repair fail a request
        log.warning("hungarian repair failed (%s); using greedy", e)
        perm, report.method = greedy_repair(M), "greedy"
    return perm, report
