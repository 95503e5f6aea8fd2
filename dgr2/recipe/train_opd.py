"""``dgr2 train opd``: on-policy distillation of the block-diffusion student from the frozen AR teacher.

    dgr2 train opd --from beauty-gr2:cft --teacher beauty-gr2:ar --data-dir ../shared/data/amazon-beauty

Each step the student decodes a batch of training prompts with the block-diffusion decoder (greedy,
its own block size and threshold; without the answer constraint with ``--unconstrained-rollouts``, so it
also learns on the duplicates it writes by itself), the teacher scores those exact sequences in one causal pass,
and the student is trained on the teacher's per-token distributions at its masked positions
(:mod:`recipe.distill`; forward KL, ``--reverse-kl`` for reverse). ``--anchor-weight W`` adds W times
the conversion's own loss on the step's examples as the data writes them (the rule's trace, the true
answer): without it, distillation on the student's own rollouts has nothing that holds the trace to
the rule, and on this project's CPU runs the trace drifted. The result is stored with the aliases
``opd`` and ``diffusion``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from dgr2.errors import UserError
from dgr2.flags import at_least, non_negative
from dgr2.model.output_head import OutputHead
from dgr2.recipe.block_diffusion import collate_diffusion
from dgr2.recipe.data import load_source
from dgr2.recipe.distill import distill_targets, kl_loss, teacher_logits
from dgr2.recipe.rollouts import add_rollout_arguments, decode_rollouts, rollout_config, rollout_mode
from dgr2.recipe.sft import TrainStream
from dgr2.recipe.train_ar import global_weight, validate_with, weighted_ce
from dgr2.recipe.trainer import (
    Stage,
    add_common_arguments,
    add_validity_shape_arguments,
    frozen,
    peak_lr,
    run_stage,
    setup_distributed,
    teardown_distributed,
    validity_term,
)

DEFAULTS = {"steps": 300, "lr": 3e-4}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "opd")
    p.add_argument("--from", dest="parent", default="beauty-gr2:cft",
                   help="student to start from (a CFT checkpoint): NAME[:VERSION_OR_ALIAS] or a folder")
    p.add_argument("--teacher", default="beauty-gr2:ar", help="frozen AR teacher: NAME[:VERSION_OR_ALIAS] or a folder")
    p.add_argument("--reverse-kl", action="store_true", help="KL(student || teacher) instead of KL(teacher || student)")
    p.add_argument("--warmup", type=at_least(0), default=10, help="warm-up steps")
    p.add_argument("--validity-weight", type=non_negative, default=0.0,
                   help="weight of -log P(an allowed slot) beside the KL, as in `dgr2 train cft` (the KL alone, "
                        "taken over allowed slots, lets the student's mass on banned ones drift); with a weight "
                        "above 0 each validation also decodes unconstrained")
    add_validity_shape_arguments(p, against=False)
    p.add_argument("--anchor-weight", type=non_negative, default=0.0,
                   help="weight of the conversion's own loss on the step's examples as the data writes them (rule "
                        "trace, true answer) beside the KL: holds the trace to the rule while the student "
                        "distils on its own rollouts")
    add_rollout_arguments(p)
    p.add_argument("--cut-at-first-fault", action="store_true",
                   help="with --unconstrained-rollouts: end each rollout at its first repeated or foreign slot, so "
                        "the student is corrected where it first fails and never trains on what follows")


def run(args: argparse.Namespace) -> int:
    if args.cut_at_first_fault and not args.unconstrained_rollouts:
        raise UserError("--cut-at-first-fault needs --unconstrained-rollouts (constrained rollouts have no fault)")
    from dgr2.model_store import Provenance, load_checkpoint, resolve_checkpoint
    from dgr2.recipe.publish import publish

    d = setup_distributed()
    parent = load_checkpoint(resolve_checkpoint(args.parent, args.store))
    teacher = frozen(load_checkpoint(resolve_checkpoint(args.teacher, args.store)).model)
    model, vocab = parent.model, parent.vocab
    trace_len = args.trace_len or parent.config.trace_len
    model.config = model.config.replace(trace_len=trace_len)  # a decoding setting: saved in config.json
    source = load_source(args.data_dir, args.synthetic)
    stream = TrainStream.for_model(vocab, source, args.candidates, model.config, args.seed)
    head = OutputHead(model, vocab, differentiable=True)
    t_head = OutputHead(teacher, vocab)
    cfg = rollout_config(model.config, args.candidates, args)
    S = model.config.block_size
    validity = validity_term(args)

    def loss(step: int, hidden) -> torch.Tensor:
        batch = stream.examples(step, args.batch_size)[d.rank:: d.world]
        rolls = decode_rollouts(model, vocab, stream, batch, cfg, cut_at_first_fault=args.cut_at_first_fault)
        rows = [r.row for r in rolls]
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        b = collate_diffusion(rows, S, vocab.mask, vocab.pad, gen, vocab)
        t_logits, t_banned = distill_targets(b, rows, teacher_logits(teacher, t_head, rows, vocab.pad), vocab)
        h = hidden(b.ids, positions=b.positions, mask=b.mask)
        value = kl_loss(head, h, b, t_logits, t_banned, global_weight(d, b.weights), reverse=args.reverse_kl,
                        validity=validity)
        if args.anchor_weight:
            value = value + args.anchor_weight * anchor_loss(batch, gen, hidden)
        return value

    def anchor_loss(batch, gen: torch.Generator, hidden) -> torch.Tensor:
        """CFT's loss on the same examples, encoded from the data rather than decoded by the student."""
        b = collate_diffusion(stream.encoded(batch), S, vocab.mask, vocab.pad, gen, vocab)
        h = hidden(b.ids, positions=b.positions, mask=b.mask)
        return weighted_ce(head, h, b.targets, b.weights, global_weight(d, b.weights), b.banned,
                           validity)

    def publish_opd(metrics: dict, steps: int):
        prov = Provenance(stage="opd", parent=str(parent.path.name), data_hash=getattr(source, "data_hash", None),
                          metrics={"valid": metrics, "steps": steps,
                                   "teacher": str(args.teacher), "kl": "reverse" if args.reverse_kl else "forward",
                                   "validity": asdict(validity), "anchor_weight": args.anchor_weight,
                                   "rollouts": rollout_mode(args), "cut_at_first_fault": args.cut_at_first_fault})
        version = args.version or f"opd-{parent.path.name}"
        return publish(args.store, args.name, version, ["opd", "diffusion"], model, vocab,
                       source.catalog, prov, decoder="diffusion")

    def validate() -> dict:
        return validate_with(model, vocab, source, args, "diffusion",
                             unconstrained=args.validity_weight > 0 or args.unconstrained_rollouts)

    stage = Stage("opd", model, loss, validate, publish_opd)
    run_stage(stage, args, d, args.steps or DEFAULTS["steps"], peak_lr(args, DEFAULTS), args.warmup)
    teardown_distributed()
    return 0
