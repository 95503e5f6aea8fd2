"""The ablation table: every row and seed is one ``dgr2 eval`` run, its command kept beside its JSON.

    python -m dgr2.recipe.evals.ablation --store runs/store --split test --limit 200 --seeds 12345,1,2 \\
        --out docs/results/ablation.jsonl          # runs the evals (resumable: done lines are kept)
    python -m dgr2.recipe.evals.ablation --out docs/results/ablation.jsonl --table   # prints the Markdown table

A stage's checkpoint defaults to its alias in ``--store``; ``--stage "+CFT=beauty-gr2:diffusion"`` names
another (a folder or ``NAME:VERSION``), for a pair whose stages live in different stores. With
``--resume-dir``, each row and seed keeps its per-user ranks (``dgr2 eval --resume-file``): a stopped
row continues where it was, and the table adds each stage's paired per-user difference from the stage
before it and from AR, over the seeds (:mod:`recipe.evals.compare`).

Rows: AR; naive conversion (the AR checkpoint, diffusion decoder); +CFT; +CFT+OPD; +CFT+OPD+RL;
with ``--answer-threshold X``, each row named in ``--answer-threshold-rows`` again, decoded with
that threshold inside the answer (``dgr2 eval --answer-threshold X``; ``--answer-threshold-only``:
instead of, not beside, the row at the checkpoint's own threshold); each row named in
``--unconstrained-rows`` again without the answer constraint (``dgr2 eval --unconstrained``).
Within one seed the rows run back to back on the same machine, so each diffusion row's decode
tokens/s is divided by that seed's AR run (the ratio column: mean ± s.e. over seeds). The printout is
two tables over the same rows: accuracy and validity (NDCG@10 after the guard's repair and as
decoded), then the answers repaired and their faults, the speed and the trace length distribution.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from dgr2.errors import UserError, print_user_error
from dgr2.model.guard import INVALID_KINDS
from dgr2.model_store import CheckpointError
from dgr2.recipe import evaluate
from dgr2.recipe.evals.compare import compare_files
from dgr2.recipe.evaluate import add_user_arguments
from dgr2.recipe.metrics import format_mean_stderr as fmt
from dgr2.records import read_json_lines

ROWS = [  # label, checkpoint alias, decoder
    ("AR", "ar", "ar"),
    ("naive conversion", "ar", "diffusion"),
    ("+CFT", "cft", "diffusion"),
    ("+CFT+OPD", "opd", "diffusion"),
    ("+CFT+OPD+RL", "rl", "diffusion"),
]


UNCONSTRAINED = ", unconstrained"  # the label suffix of a row decoded without the answer constraint


def rows(args: argparse.Namespace) -> list[tuple[str, str, str, list[str]]]:
    """(label, checkpoint, decoder, extra ``dgr2 eval`` flags) of every row this run evaluates; the checkpoint is
    the stage's alias unless ``--stage`` named another."""
    named = getattr(args, "stage", None) or {}
    selected = [(label, named.get(label, ref), dec) for label, ref, dec in ROWS
                if not getattr(args, "rows", None) or label in args.rows]
    threshold = getattr(args, "answer_threshold", None)
    variant = {label for label, _, dec in selected
               if threshold is not None and dec == "diffusion" and label in args.answer_threshold_rows}
    only = getattr(args, "answer_threshold_only", False)
    out = [(label, ref, dec, []) for label, ref, dec in selected if not (only and label in variant)]
    for label, ref, dec in selected:
        if label in variant:
            out.append((f"{label}, answer threshold {threshold:g}", ref, dec,
                        ["--answer-threshold", str(threshold)]))
    for label, ref, dec in selected:
        if label in (getattr(args, "unconstrained_rows", None) or []):
            out.append((f"{label}{UNCONSTRAINED}", ref, dec, ["--unconstrained"]))
    return out


def checkpoint_ref(args: argparse.Namespace, ref: str) -> str:
    """A bare alias is looked up under ``--name``; ``NAME:VERSION`` and folders are taken as they are."""
    return ref if ":" in ref or "/" in ref else f"{args.name}:{ref}"


def resume_path(resume_dir: str, label: str, seed: int) -> Path:
    """``+CFT+OPD, unconstrained`` on seed 1 -> ``cft-opd-unconstrained-1.resume.jsonl``."""
    slug = "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())
    return Path(resume_dir) / f"{slug}-{seed}.resume.jsonl"


def eval_command(args: argparse.Namespace, ref: str, decoder: str, seed: int) -> list[str]:
    cmd = ["dgr2", "eval", "--checkpoint", checkpoint_ref(args, ref), "--decoder", decoder, "--split", args.split,
           "--candidates", "100", "--neg-seed", str(seed), "--batch-size", str(args.batch_size), "--json"]
    if args.store:
        cmd += ["--store", args.store]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if getattr(args, "sample", None):
        cmd += ["--sample", str(args.sample)]
    if getattr(args, "data_dir", None):
        cmd += ["--data-dir", args.data_dir]
    if getattr(args, "device", "cpu") != "cpu":
        cmd += ["--device", args.device]
    return cmd


def stage_checkpoint(value: str) -> tuple[str, str]:
    """``--stage LABEL=CHECKPOINT`` as a (label, checkpoint) pair."""
    label, sep, ref = value.partition("=")
    if not sep or not label or not ref:
        raise argparse.ArgumentTypeError(f"expected LABEL=CHECKPOINT (e.g. '+CFT=beauty-gr2:diffusion'), got {value!r}")
    return label, ref


def run_evals(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = {(r["label"], r["neg_seed"]) for r in read(out)}
    eval_parser = argparse.ArgumentParser(prog="dgr2 eval", exit_on_error=False)
    evaluate.add_arguments(eval_parser)
    resume_dir = getattr(args, "resume_dir", None)
    if resume_dir:
        Path(resume_dir).mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for label, ref, decoder, extra in rows(args):
            if (label, seed) in done:
                continue
            resume = str(resume_path(resume_dir, label, seed)) if resume_dir else None
            cmd = eval_command(args, ref, decoder, seed) + extra + (["--resume-file", resume] if resume else [])
            print("$", shlex.join(cmd), file=sys.stderr, flush=True)
            try:  # the recorded command is the user-facing `dgr2 eval ...`, run here as a function
                result = evaluate.eval_result(eval_parser.parse_args(cmd[2:]))
            except (SystemExit, CheckpointError) as e:
                print(f"skipped {label} (seed {seed}): {e}", file=sys.stderr)
                continue
            record = {"label": label, "command": shlex.join(cmd), **result}
            if resume:
                record["resume_file"] = resume
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")


def read(path: Path) -> list[dict]:
    return read_json_lines(path, missing_ok=True)


def table(records: list[dict]) -> str:
    """Two Markdown tables over the same rows (mean ± s.e. over seeds): accuracy and validity, with NDCG@10
    after the guard's repair and as decoded; then how each answer was written and at what speed (a diffusion
    row's tokens/s divided by its own seed's AR run) and the trace length distribution."""
    ar_speed = {r["neg_seed"]: r["decode_tokens_per_s"] for r in records if r["label"] == "AR"}
    labels = list(dict.fromkeys([label for label, _, _ in ROWS] + [r["label"] for r in records]))
    groups = [(label, rs) for label in labels if (rs := [r for r in records if r["label"] == label])]
    accuracy = ["| row | users × seeds | NDCG@10 | NDCG@10 as decoded | HR@1 | HR@10 | raw valid |",
                "|---" * 7 + "|"]
    writing = ["| row | answers repaired | invalid as decoded (dup / missing / out-of-set / malformed) | "
               "tokens / forward | decode tokens/s | ratio to AR | trace tokens p5 / p50 / p95 |", "|---" * 7 + "|"]
    for label, rs in groups:
        accuracy.append(f"| {label} | {rs[0]['n']} × {len(rs)} | {fmt([r['ndcg@10'] for r in rs])} | "
                        f"{fmt(present(rs, 'ndcg@10_before_repair'))} | {fmt(present(rs, 'hr@1'), 3)} | "
                        f"{fmt([r['hr@10'] for r in rs], 3)} | {fmt([r['valid_raw'] for r in rs], 3)} |")
        repaired = sum(round(r["n"] * (1 - r["valid_raw"])) for r in rs)
        kinds = " / ".join(f"{sum(r['invalid_raw'][k] for r in rs) / len(rs):.3f}" for k in INVALID_KINDS)
        ratios = [r["decode_tokens_per_s"] / ar_speed[r["neg_seed"]] for r in rs if r["neg_seed"] in ar_speed]
        traced = [r["trace_tokens"] for r in rs if r.get("trace_tokens")]
        lengths = " / ".join(f"{sum(t[q] for t in traced) / len(traced):.0f}" for q in ("p5", "p50", "p95")) \
            if traced else "n/a"
        writing.append(f"| {label} | {repaired} of {sum(r['n'] for r in rs)} | {kinds} | "
                       f"{fmt([r['tokens_per_forward'] for r in rs], 2)} | "
                       f"{fmt([r['decode_tokens_per_s'] for r in rs], 0)} | {fmt(ratios, 2)} | {lengths} |")
    return "\n".join(accuracy) + "\n\n" + "\n".join(writing)


def stage_pairs(labels: list[str]) -> list[tuple[str, str]]:
    """(B, A) pairs the paired table reports: each stage against the stage before it in the same decoding
    mode (constrained rows, unconstrained rows), then against AR; variants such as an answer threshold are
    left to their own comparisons."""
    order = [label for label, _, _ in ROWS]
    out: list[tuple[str, str]] = []
    for suffix in ("", UNCONSTRAINED):
        chain = [label + suffix for label in order[1:] if label + suffix in labels]
        for i, label in enumerate(chain):
            if i:
                out.append((label, chain[i - 1]))
            if "AR" in labels:
                out.append((label, "AR"))
    return out


def paired_table(records: list[dict]) -> str:
    """Each stage's paired per-user difference (B - A) in NDCG@10, HR@1 and HR@10, each user averaged over the
    seeds both rows hold, standard error over users; '' when the records keep no resume files."""
    files = {(r["label"], r["neg_seed"]): r["resume_file"] for r in records
             if r.get("resume_file") and Path(r["resume_file"]).exists()}
    labels = list(dict.fromkeys(label for label, _ in files))
    lines = ["| stage | against | users × seeds | NDCG@10 | HR@1 | HR@10 |", "|---" * 6 + "|"]
    for b, a in stage_pairs(labels):
        seeds = sorted({s for label, s in files if label == a} & {s for label, s in files if label == b})
        if not seeds:
            continue
        out = compare_files(*[files[(label, s)] for s in seeds for label in (a, b)])
        cells = " | ".join(f"{out[m]['diff']:+.4f} ± {out[m]['stderr']:.4f}" for m in ("ndcg@10", "hr@1", "hr@10"))
        lines.append(f"| {b} | {a} | {out['n']} × {len(seeds)} | {cells} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def report(records: list[dict]) -> str:
    """The two tables of :func:`table`, then the paired one where the rows kept resume files."""
    pairs = paired_table(records)
    return table(records) + ("\n\n" + pairs if pairs else "")


def present(records: list[dict], key: str) -> list[float]:
    """``key`` of the records that have it (files written before a metric existed lack it: ``n/a``)."""
    return [r[key] for r in records if r.get(key) is not None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgr2.recipe.evals.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=None)
    p.add_argument("--data-dir", default=None, help="data folder of every row's eval (default: $DGR2_DATA_DIR)")
    p.add_argument("--name", default="beauty-gr2")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    add_user_arguments(p)  # per run; default: all users
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[12345, 1, 2])
    p.add_argument("--out", required=True, help="JSON lines, one per (row, seed); appended, resumable")
    p.add_argument("--answer-threshold", type=float, default=None,
                   help="also evaluate the --answer-threshold-rows with this threshold inside the answer")
    p.add_argument("--answer-threshold-rows", type=lambda s: s.split(","), default=["+CFT+OPD+RL"],
                   help="comma-separated row labels for --answer-threshold (default %(default)s)")
    p.add_argument("--answer-threshold-only", action="store_true",
                   help="evaluate the --answer-threshold-rows only with --answer-threshold (not also without)")
    p.add_argument("--unconstrained-rows", type=lambda s: s.split(","), default=[],
                   help="comma-separated row labels to evaluate again without the answer constraint "
                        "(`dgr2 eval --unconstrained`: the structural gap the grammar hides)")
    p.add_argument("--rows", type=lambda s: s.split(","), default=None,
                   help="comma-separated row labels to evaluate (default: all); answer-threshold rows follow "
                        "their base row")
    p.add_argument("--stage", type=stage_checkpoint, action="append", default=[], metavar="LABEL=CHECKPOINT",
                   help="the checkpoint of one row's stage instead of its alias in --store (NAME:VERSION or a "
                        "folder); repeat for each stage")
    p.add_argument("--resume-dir", default=None,
                   help="keep each row and seed's per-user ranks here: stopped rows continue, and the table adds "
                        "each stage's paired difference")
    p.add_argument("--device", default="cpu", help="torch device of the evals: cpu or cuda")
    p.add_argument("--table", action="store_true", help="print the Markdown table of --out and exit")
    args = p.parse_args(argv)
    known = [label for label, _, _ in ROWS]
    args.stage = dict(args.stage)
    for flag, named in (("--rows", args.rows or []), ("--stage", args.stage)):
        if unknown := set(named) - set(known):
            p.error(f"{flag}: unknown row(s) {sorted(unknown)}; rows are {known}")
    try:
        if not args.table:
            run_evals(args)
        print(report(read(Path(args.out))))
    except UserError as e:  # a data folder or resume file the user named: one line, as `dgr2` answers it
        return print_user_error(p.prog, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
