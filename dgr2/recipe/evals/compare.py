"""Paired comparison of two evals from their ``--resume-file`` records.

Two checkpoints evaluated on the same split, candidate count and negative-sampling seed rank the
target among the *same* candidate lists, so the per-user difference of a metric removes the
user-to-user spread that dominates an unpaired comparison (one seed's NDCG@10 over all users carries
~0.0025 of standard error; the paired difference between two similar models ~0.001). The resume
files hold each user's rank, so this works part-way through a long eval too, over the users both
files hold. A positive ``diff`` means B is better.

Several pairs, one per negative-sampling seed, give one figure over the seeds: each user's metric is
averaged over the seeds first, so the standard error is over users, as for one seed, and a user's
draws on different seeds are not counted as independent users.

    dgr2 compare A.resume.jsonl B.resume.jsonl [A2 B2 ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from dgr2.recipe.evals.eval_tally import ResumeError, read_resume_file
from dgr2.recipe.metrics import hr_at, mean_and_stderr, ndcg_at, reciprocal_rank

# the candidate lists must be the same for a pair to mean anything
SAME_LISTS = ("split", "candidates", "neg_seed")
PER_USER = {
    "ndcg@5": lambda r: ndcg_at(r, 5),
    "ndcg@10": lambda r: ndcg_at(r, 10),
    "hr@1": lambda r: hr_at(r, 1),
    "hr@5": lambda r: hr_at(r, 5),
    "hr@10": lambda r: hr_at(r, 10),
    "mrr": reciprocal_rank,
}


def paired(ranks_a: dict[str, int], ranks_b: dict[str, int], *more: tuple[dict[str, int], dict[str, int]]) -> dict:
    """Per metric: the means of A and B over the users every draw holds, B - A, and its standard error
    over users. ``more``: the same two rankers' ranks on further negative-sampling seeds, each user's
    metric averaged over the seeds before the difference."""
    draws = [(ranks_a, ranks_b), *more]
    users = [u for u in ranks_a if all(u in a and u in b for a, b in draws)]
    if not users:
        raise ValueError("the evals have no user in common")
    out: dict = {"n": len(users)}
    for name, metric in PER_USER.items():
        a = [sum(metric(ra[u]) for ra, _ in draws) / len(draws) for u in users]
        b = [sum(metric(rb[u]) for _, rb in draws) / len(draws) for u in users]
        diff, se = mean_and_stderr([y - x for x, y in zip(a, b, strict=True)])
        out[name] = {"a": round(sum(a) / len(a), 6), "b": round(sum(b) / len(b), 6),
                     "diff": round(diff, 6), "stderr": round(se, 6), "z": round(diff / se, 2) if se else None}
    return out


def _ranker(head: dict) -> str | None:
    """What ranked: a checkpoint, or a baseline (``baseline:evidence``)."""
    return head.get("checkpoint") or (f"baseline:{head['baseline']}" if head.get("baseline") else None)


def _read_pair(path_a: str, path_b: str) -> tuple[dict, dict, dict[str, int], dict[str, int]]:
    """The two files' settings and per-user ranks; refused unless they ranked the same candidate lists."""
    (head_a, tally_a), (head_b, tally_b) = read_resume_file(path_a), read_resume_file(path_b)
    for key in SAME_LISTS:
        if head_a.get(key) != head_b.get(key):
            raise ResumeError(f"the evals ranked different candidate lists: {key} {head_a.get(key)!r} in {path_a}, "
                              f"{head_b.get(key)!r} in {path_b}")
    hashes = head_a.get("data_hash"), head_b.get("data_hash")  # a baseline's file names its data
    if None not in hashes and hashes[0] != hashes[1]:
        raise ResumeError(f"the evals read different data: data_hash {hashes[0]} in {path_a}, {hashes[1]} in {path_b}")
    return (head_a, head_b, dict(zip(tally_a.users, tally_a.ranks, strict=True)),
            dict(zip(tally_b.users, tally_b.ranks, strict=True)))


def compare_files(path_a: str, path_b: str, *more: str) -> dict:
    """``more``: further A, B file pairs of the same two rankers, one pair per negative-sampling seed."""
    if len(more) % 2:
        raise ValueError(f"resume files come in pairs, A B for each seed: {more[-1]} has no partner")
    pairs = [(path_a, path_b), *zip(more[::2], more[1::2], strict=True)]
    read = [_read_pair(a, b) for a, b in pairs]
    head_a, head_b, ranks_a, ranks_b = read[0]
    for (a, b), (other_a, other_b, _, _) in zip(pairs[1:], read[1:], strict=True):
        if (_ranker(other_a), _ranker(other_b)) != (_ranker(head_a), _ranker(head_b)):
            raise ResumeError(f"{a} and {b} compare {_ranker(other_a)!r} with {_ranker(other_b)!r}, the first pair "
                              f"{_ranker(head_a)!r} with {_ranker(head_b)!r}: every pair is the same two rankers")
        for key in ("split", "candidates"):
            if other_a.get(key) != head_a.get(key):
                raise ResumeError(f"the seeds ranked different lists: {key} {other_a.get(key)!r} in {a}, "
                                  f"{head_a.get(key)!r} in {path_a}")
    seeds = [head.get("neg_seed") for head, _, _, _ in read]
    if len(set(seeds)) < len(seeds):
        raise ResumeError(f"a negative-sampling seed appears twice ({seeds}): each pair is another seed")
    return {"a": {"file": path_a, "checkpoint": _ranker(head_a), "users": len(ranks_a)},
            "b": {"file": path_b, "checkpoint": _ranker(head_b), "users": len(ranks_b)},
            "split": head_a.get("split"), "candidates": head_a.get("candidates"),
            **({"neg_seed": seeds[0]} if len(pairs) == 1 else {"neg_seeds": seeds, "files": [list(p) for p in pairs]}),
            **paired(ranks_a, ranks_b, *[(ra, rb) for _, _, ra, rb in read[1:]])}


def render(result: dict) -> str:
    a, b = result["a"], result["b"]
    lines = [f"A = {a['checkpoint']} ({a['users']} users), B = {b['checkpoint']} ({b['users']} users); "
             f"{result['n']} users in common, {result['split']} split, " + (
                 f"each user averaged over neg seeds {', '.join(map(str, result['neg_seeds']))}"
                 if "neg_seeds" in result else f"neg seed {result['neg_seed']}"),
             f"{'metric':<8} {'A':>8} {'B':>8} {'B - A':>9} {'stderr':>8} {'z':>6}"]
    for name in PER_USER:
        m = result[name]
        z = "" if m["z"] is None else f"{m['z']:.1f}"
        lines.append(f"{name:<8} {m['a']:>8.4f} {m['b']:>8.4f} {m['diff']:>+9.4f} {m['stderr']:>8.4f} {z:>6}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="resume file of the first eval (`dgr2 eval --resume-file`)")
    p.add_argument("b", metavar="B", help="resume file of the second eval; diff = B - A")
    p.add_argument("more", metavar="A2 B2", nargs="*",
                   help="more pairs of the same two rankers, one pair per negative-sampling seed: one figure over "
                        "the seeds, each user's metric averaged over them")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        result = compare_files(args.a, args.b, *args.more)
    except (ResumeError, ValueError) as e:
        print(f"dgr2 compare: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else render(result))
    return 0

