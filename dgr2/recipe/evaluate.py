"""``dgr2 eval``: rank held-out users' candidates with a checkpoint and report the metrics.

    dgr2 eval --checkpoint beauty-gr2:ar --decoder ar --data-dir DIR --split test \\
        --candidates 100 --neg-seed 12345 --json

Metrics are computed on the guarded ranking; ``valid_raw`` (and the invalid fractions by kind) on
the answer as decoded. A tqdm bar goes to stderr and the JSON alone to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from dgr2.flags import add_pass_economy_arguments, at_least, fraction, positive_int
from dgr2.model.config import DECODERS
from dgr2.model.decoding import DecodeConfig, completion_budget
from dgr2.model.engine import RankRequest, Reranker
from dgr2.model.tokenizer import MAX_SLOTS
from dgr2.recipe.data import Example, eval_examples, load_source
from dgr2.recipe.evals.eval_tally import ResumeError, ResumeFile, Tally
from dgr2.recipe.evals.score_report import ScoreReport
from dgr2.recipe.metrics import summarize
from dgr2.recipe.traces import evidence, rule_for, trace_entries


def evaluate(reranker: Reranker, examples: Sequence[Example], batch_size: int = 32,
             progress: bool = True, resume: ResumeFile | None = None, scores: ScoreReport | None = None) -> dict:
    """Metrics of the guarded rankings, validity as decoded, decode speed, and the trace fidelity
    (:mod:`recipe.trace_fidelity`) against the rule's trace cut at the model's trace length. With
    ``resume``, users already in that file are not decoded again and count towards the result.
    With ``scores``, every decoded user is also added to that :class:`ScoreReport`."""
    total = resume.load() if resume else Tally()
    done = set(total.users)
    todo = [e for e in examples if e.user not in done]
    if len(done) + len(todo) != len(examples):
        raise ResumeError(f"{resume.path} holds {len(done) + len(todo) - len(examples)} users this eval does not")
    rule = rule_for(reranker.vocab, reranker.model.config.evidence_rule)  # the trace's rule, fitted or not
    trace_len = reranker.model.config.trace_len
    bar = tqdm(total=len(examples), initial=len(done), desc=f"eval {reranker.decoder}", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start: start + batch_size]
        batch = Tally()
        t0 = time.perf_counter()
        results = reranker.rank([RankRequest(e.history, e.candidates) for e in chunk])
        batch.decode_s = time.perf_counter() - t0
        for ex, res in zip(chunk, results, strict=True):
            batch.users.append(ex.user)
            batch.ranks.append(res.order.index(ex.target_slot))
            batch.valid += res.report.valid_as_decoded
            for kind, bad in res.report.faults().items():
                batch.invalid[kind] += bad
            batch.passes += res.forward_passes
            batch.generated += res.generated_tokens
            reference = trace_entries(evidence(reranker.catalog, ex.history, ex.candidates, rule), trace_len)
            trace = res.reasoning.split()
            batch.fidelity.add(trace, reference, res.order)
            batch.trace_tokens.append(len(trace))
            raw = res.decoded_slots
            batch.raw_ranks.append(raw.index(ex.target_slot) if ex.target_slot in raw else -1)
            if scores is not None:
                scores.add(res, ex.target_slot)
        if resume:
            resume.append(batch)
        total.merge(batch)
        bar.update(len(chunk))
        bar.set_postfix(ndcg10=f"{summarize(total.ranks)['ndcg@10']:.4f}",
                        valid=f"{total.valid / len(total.ranks):.3f}")
    bar.close()
    return total.summary()


def baseline_ranks(name: str, source, examples: Sequence[Example]) -> list[int]:
    """Rank of each target under a non-learned baseline on the same candidate lists.

    ``pop``: training-interaction count (PopRec); ``evidence``: the trace's evidence score
    (brand, category and co-occurrence matches with the history, plus popularity) under the data
    folder's own rule when it has one (``recipe.data.RULE_FILE``), else the current rule (v4);
    ``evidence-v3``: under the rule of the checkpoints trained before it.
    """
    from dgr2.recipe.traces import RULE_V3, RULE_V4, EvidenceRule, heuristic_order

    current = EvidenceRule.from_dict(source.rule) if source.rule else RULE_V4

    ranks = []
    for ex in examples:
        if name == "pop":
            order = sorted(range(len(ex.candidates)), key=lambda k: (-source.counts.get(ex.candidates[k], 0), k))
        else:
            rule = RULE_V3 if name == "evidence-v3" else current
            order = heuristic_order(evidence(source.catalog, ex.history, ex.candidates, rule))
        ranks.append(order.index(ex.target_slot))
    return ranks


def record_baseline(resume: ResumeFile, examples: Sequence[Example], ranks: list[int]) -> None:
    """Append the users ``resume`` lacks, as one record (a baseline's ranking is always a valid one)."""
    done = set(resume.load().users)  # a file of another eval: ResumeError, one line from the command
    new = [(ex.user, r) for ex, r in zip(examples, ranks, strict=True) if ex.user not in done]
    if new:
        resume.append(Tally(users=[u for u, _ in new], ranks=[r for _, r in new], valid=len(new)))


def add_user_arguments(p: argparse.ArgumentParser) -> None:
    """``--limit`` / ``--sample``: which users an eval covers (``dgr2 eval`` and the ablation)."""
    users = p.add_mutually_exclusive_group()
    users.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N users")
    users.add_argument("--sample", type=positive_int, default=None,
                       help="evaluate N users drawn uniformly at random (fixed seed; unbiased, unlike --limit)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="NAME[:VERSION_OR_ALIAS] in the store, or a checkpoint folder")
    p.add_argument("--baseline", choices=["pop", "evidence", "evidence-v3"], default=None,
                   help="score a non-learned baseline on the same candidate lists instead of a checkpoint")
    p.add_argument("--store", default=None, help="model store root (default: $DGR2_STORE or the shipped store)")
    p.add_argument("--decoder", choices=DECODERS, default=None,
                   help="decoder to use (default: the checkpoint's own)")
    p.add_argument("--data-dir", default=None, help="data folder, any layout of docs/data.md (default: $DGR2_DATA_DIR)")
    p.add_argument("--synthetic", action="store_true", help="evaluate on the generated synthetic data instead")
    p.add_argument("--split", choices=["valid", "test"], default="test", help="leave-one-out split")
    p.add_argument("--candidates", type=at_least(2), default=100,
                   help="candidates per user: target + K-1 negatives (at most 100 for a checkpoint)")
    p.add_argument("--neg-seed", type=int, default=12345, help="negative-sampling seed")
    add_user_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=32, help="requests decoded together")
    p.add_argument("--block-size", type=positive_int, default=None, help="diffusion block size (default: checkpoint's)")
    p.add_argument("--threshold", type=fraction, default=None, help="diffusion threshold (default: checkpoint's)")
    p.add_argument("--answer-threshold", type=fraction, default=None,
                   help="diffusion threshold inside the answer (default: checkpoint's, else --threshold; 1 = off)")
    p.add_argument("--unconstrained", action="store_true",
                   help="decode without the answer constraint (no slot exclusions or answer grammar): "
                        "what the model does on its own, the structural gap")
    p.add_argument("--causal-first-rank", action=argparse.BooleanOptionalAction, default=None,
                   help="diffusion: the pass that decides rank 1 reads the block up to <answer> causally "
                        "(the view AR predicts rank 1 from; default on)")
    add_pass_economy_arguments(p)
    p.add_argument("--trace-len", type=positive_int, default=None,
                   help="decode budget's trace length (default: the checkpoint's, the length it was trained with)")
    p.add_argument("--device", default="cpu", help="torch device the model runs on: cpu or cuda[:N]")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--resume-file", default=None,
                   help="append each finished batch to this file and, when it exists, skip the users it "
                        "holds (an all-users CPU eval that survives a stop; refused if written by another eval: "
                        "other settings, weights or data folder)")
    p.add_argument("--score-report", default=None, metavar="FILE",
                   help="also write FILE (JSON): the served relevance_score of the held-out item at each rank "
                        "and the metrics of re-sorting the candidates by the raw expected gain "
                        "(dgr2/recipe/evals/score_report.py)")


def pass_economy(cfg: DecodeConfig) -> dict:
    """The diffusion decoder's pass-economy switches that differ from their defaults: left out at the
    defaults, so resume files written before the switches existed still match."""
    default = DecodeConfig()
    return {k: getattr(cfg, k) for k in ("answer_claims", "claims_from_rank", "block_cache")
            if getattr(cfg, k) != getattr(default, k)}


def run(args: argparse.Namespace) -> int:
    result = eval_result(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def eval_result(args: argparse.Namespace) -> dict:
    """What ``dgr2 eval`` prints, for parsed ``dgr2 eval`` arguments; SystemExit with the message on bad input."""
    from dgr2.model_store import load_checkpoint, resolve_checkpoint

    if bool(args.checkpoint) == bool(args.baseline):
        raise SystemExit("dgr2 eval: give exactly one of --checkpoint or --baseline")
    if args.score_report and (args.baseline or args.resume_file):
        raise SystemExit("dgr2 eval: --score-report needs a checkpoint whose users all decode in this run "
                         "(no --baseline, no --resume-file)")
    if args.checkpoint and args.candidates > MAX_SLOTS:
        raise SystemExit(f"dgr2 eval: --candidates {args.candidates}: a checkpoint ranks at most {MAX_SLOTS} "
                         "candidates; lower it (or rank more with --baseline)")
    for flag, path in (("--resume-file", args.resume_file), ("--score-report", args.score_report)):
        if path and not Path(path).resolve().parent.is_dir():
            raise SystemExit(f"dgr2 eval: {flag} {path}: its folder does not exist; create it first")
    source = load_source(args.data_dir, args.synthetic)
    data_hash = getattr(source, "data_hash", None)  # a resume file pins it (the synthetic set has none)
    try:
        examples = eval_examples(source.sequences, source.item_ids, args.split, args.candidates, args.neg_seed,
                                 args.limit, args.sample)
    except ValueError as e:
        raise SystemExit(f"dgr2 eval: {e}") from None
    users = {"limit": args.limit, "sample": args.sample}
    if args.baseline:
        ranks = baseline_ranks(args.baseline, source, examples)
        settings = {"baseline": args.baseline, "split": args.split, "candidates": args.candidates,
                    "neg_seed": args.neg_seed, **users}
        if args.baseline == "evidence" and source.rule:
            settings["rule"] = source.rule  # the folder's fitted rule (left out otherwise: older files still match)
        if args.resume_file:  # per-user ranks, so that `dgr2 compare` can pair a model with the baseline
            record_baseline(ResumeFile(args.resume_file, {**settings, "data_hash": data_hash}),
                            examples, ranks)
        return {"n": len(examples), **summarize(ranks), **settings}
    from dgr2.recipe.trainer import training_device

    ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint, args.store), device=training_device(args))
    decoder = args.decoder or ckpt.config.decoder
    if args.trace_len:
        ckpt.model.config = ckpt.model.config.replace(trace_len=args.trace_len)
    trace_len = ckpt.config.trace_len
    if args.unconstrained and args.answer_threshold is not None:
        raise SystemExit("dgr2 eval: --answer-threshold needs the answer constraint; drop --unconstrained")
    cfg = DecodeConfig.for_model(ckpt.config, max_new_tokens=completion_budget(trace_len, args.candidates),
                                 block_size=args.block_size, threshold=args.threshold,
                                 answer_threshold=args.answer_threshold, constrain_answer=not args.unconstrained,
                                 causal_first_rank=args.causal_first_rank, answer_claims=args.answer_claims,
                                 claims_from_rank=args.claims_from_rank, block_cache=args.block_cache)
    settings = dict(checkpoint=str(ckpt.path.name), decoder=decoder, split=args.split, candidates=args.candidates,
                    neg_seed=args.neg_seed, block_size=cfg.block_size, threshold=cfg.threshold,
                    answer_threshold=cfg.answer_threshold, constrained=cfg.constrain_answer,
                    causal_first_rank=cfg.causal_first_rank, **pass_economy(cfg),
                    max_new_tokens=cfg.max_new_tokens, batch_size=args.batch_size,
                    device=args.device, **users)
    # the resume file also pins the weights and the data, so a re-trained checkpoint of the same name, or
    # another folder of the same catalog (another attribute mapping), is refused
    resume = ResumeFile(args.resume_file, {**settings, "weights_sha256": ckpt.manifest["files"]["model.safetensors"],
                                           "trace_len": trace_len, "data_hash": data_hash}
                        ) if args.resume_file else None
    scores = ScoreReport() if args.score_report else None
    try:
        result = evaluate(Reranker(ckpt.model, ckpt.vocab, ckpt.catalog, decoder, cfg), examples, args.batch_size,
                          resume=resume, scores=scores)
    except ResumeError as e:
        raise SystemExit(f"dgr2 eval: {e}") from None
    result.update(settings)
    if scores is not None:
        scores.write(args.score_report, settings)
        result["score_report"] = args.score_report
    return result
