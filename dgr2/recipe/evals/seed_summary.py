"""Mean and standard error over negative-sampling seeds, from the ``dgr2 eval --json`` output of each seed.

The project reports every metric as mean ± standard error over three seeds (12345, 1, 2). The per-seed
evals are separate runs (about an hour each on a 2-core CPU, see ``scripts/eval_all_users.sh``), so
this reads their JSON objects back and checks that they belong together before averaging: the same
checkpoint name, decoder, split, candidate count, decoding settings and number of users, and no
seed twice. The standard error is over seeds (n - 1 in the variance),
the spread that a new draw of the 99 negatives would give.

    dgr2 summarize OUT/test-all-12345.json OUT/test-all-1.json OUT/test-all-2.json [--json | --markdown LABEL]
"""

from __future__ import annotations

import argparse
import json
import sys

from dgr2.recipe.metrics import format_mean_stderr, mean_and_stderr
from dgr2.records import read_json_objects

METRICS = ("ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10", "mrr", "valid_raw", "tokens_per_forward")
# what must agree for the seeds to be draws of one experiment
SAME = ("checkpoint", "baseline", "rule", "decoder", "split", "candidates", "n", "block_size", "threshold",
        "answer_threshold", "constrained", "causal_first_rank", "max_new_tokens", "limit", "sample")


def read_evals(paths: list[str]) -> list[dict]:
    """The eval results of every file, each tagged with its file for the error messages."""
    out = []
    for path in paths:
        for rec in read_json_objects(path):
            if "neg_seed" not in rec or "ndcg@10" not in rec:
                raise ValueError(f"{path}: not a dgr2 eval --json result (no neg_seed / ndcg@10)")
            out.append({**rec, "_file": path})
    return out


def summarize_seeds(records: list[dict]) -> dict:
    if not records:
        raise ValueError("no eval results given")
    first = records[0]
    for rec in records[1:]:
        for key in SAME:
            if rec.get(key) != first.get(key):
                raise ValueError(f"the evals differ in {key}: {first.get(key)!r} in {first['_file']}, "
                                 f"{rec.get(key)!r} in {rec['_file']}")
    seeds = [r["neg_seed"] for r in records]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears twice: {seeds}")
    metrics = {}
    for name in METRICS:
        values = [r[name] for r in records if name in r]
        if len(values) == len(records):
            mean, se = mean_and_stderr(values)
            metrics[name] = {"mean": round(mean, 6), "stderr": round(se, 6), "per_seed": values}
    return {**{key: first.get(key) for key in SAME}, "seeds": seeds, "metrics": metrics}


def markdown_row(label: str, summary: dict) -> str:
    """One row of the all-users accuracy table (docs/results.md): NDCG@5/10, HR@1/5/10, MRR as mean ± s.e."""
    cells = [format_mean_stderr(summary["metrics"][name]["per_seed"])
             for name in ("ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10", "mrr")]
    return f"| {label} | " + " | ".join(cells) + " |"


def render(summary: dict) -> str:
    ranker = (f"{summary['checkpoint']} ({summary['decoder']})" if summary["checkpoint"]
              else f"baseline {summary['baseline']}")
    lines = [f"{ranker}, {summary['split']} split, {summary['n']} users, "
             f"{summary['candidates']} candidates, seeds {', '.join(map(str, summary['seeds']))}",
             f"{'metric':<18} {'mean':>8} {'stderr':>8}  per seed"]
    for name, m in summary["metrics"].items():
        lines.append(f"{name:<18} {m['mean']:>8.4f} {m['stderr']:>8.4f}  "
                     + " ".join(f"{v:.4f}" for v in m["per_seed"]))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="dgr2 eval --json outputs (one object per file, or JSON lines)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    out.add_argument("--markdown", metavar="LABEL", default=None,
                     help="print one Markdown table row (NDCG@5/10, HR@1/5/10, MRR) labelled LABEL")


def run(args: argparse.Namespace) -> int:
    try:
        summary = summarize_seeds(read_evals(args.files))
    except (OSError, ValueError) as e:
        print(f"dgr2 summarize: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    elif args.markdown is not None:
        print(markdown_row(args.markdown, summary))
    else:
        print(render(summary))
    return 0
