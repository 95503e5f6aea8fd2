"""``dgr2 train ar``: supervised fine-tuning of the AR re-ranker from scratch (the GR2 stand-in).

    dgr2 train ar --data-dir ../shared/data/amazon-beauty                  # one process, CPU
    torchrun --nproc-per-node 2 -m dgr2 train ar --data-dir ...           # DDP (gloo on CPU)

Teacher-forced next-token loss on the completion (trace, ranking, ``<eos>``), with extra weight on
the first ranked slot, where NDCG is decided. Resumable from ``--run-dir``; validation NDCG@10 and
raw validity on ``--val-users`` validation users every ``--eval-every`` steps; the final weights go
to the model store with a manifest and the alias ``ar``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from dgr2.flags import at_least
from dgr2.model.decoding import DecodeConfig, completion_budget
from dgr2.model.engine import Reranker
from dgr2.model.output_head import OutputHead
from dgr2.recipe.data import eval_examples, load_source
from dgr2.recipe.evals.slot_mass import VIEWS, banned_slot_mass
from dgr2.recipe.evaluate import evaluate
from dgr2.recipe.losses import ValidityTerm
from dgr2.recipe.prefetch import Prefetcher
from dgr2.recipe.sft import TrainStream, collate
from dgr2.recipe.trainer import (
    Dist,
    Stage,
    add_common_arguments,
    add_device_arguments,
    peak_lr,
    run_stage,
    setup_distributed,
    teardown_distributed,
    training_device,
)

DEFAULTS = {"steps": 1800, "lr": 2e-3, "preset": "small"}
PROBE_USERS = 16  # validation users of the banned-slot probe (seconds on a CPU)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "ar")
    add_device_arguments(p)
    p.add_argument("--preset", default=DEFAULTS["preset"], help="architecture preset (tiny, small, base)")
    p.add_argument("--rank-weight", type=float, default=5.0, help="loss weight of the first ranked slot")
    p.add_argument("--warmup", type=at_least(0), default=30, help="warm-up steps")
    p.add_argument("--init-from", default=None,
                   help="warm start: NAME[:VERSION_OR_ALIAS] or folder of an AR checkpoint on the same data "
                        "(its weights, a fresh optimizer and schedule; --preset is then the checkpoint's)")


def weighted_ce(head: OutputHead, h: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                total_weight: torch.Tensor, banned: torch.Tensor | None = None,
                validity: ValidityTerm | None = None) -> torch.Tensor:
    """Weighted cross-entropy on the output vocabulary, with logits only where the weight is non-zero.

    ``banned`` ``[B, T, MAX_SLOTS]`` removes excluded slots from each position's softmax (each ranking
    step a softmax over the candidates left: Plackett-Luce). ``validity`` adds back, scaled, the
    probability the model itself puts on those slots, ``-log(1 - p_banned)``: at 1 the loss is the plain
    cross-entropy, so the model learns to avoid repeats on its own instead of relying on the decoder's
    constraint (its margin and what it weighs the banned slots against: :func:`recipe.losses.banned_nll`)."""
    sel = weights > 0
    cols = head.col_of[targets[sel]]
    if bool((cols < 0).any()):
        raise ValueError("a completion target lies outside the output vocabulary")
    logits = head(h[sel])
    mask = head.slot_mask(banned[sel]) if banned is not None else torch.zeros_like(logits, dtype=torch.bool)
    ce = F.cross_entropy(logits.masked_fill(mask, float("-inf")), cols, reduction="none")
    if validity is not None and validity.weight:
        ce = ce + validity(logits, mask, cols)
    return (ce * weights[sel]).sum() / total_weight


def global_weight(d: Dist, weights: torch.Tensor) -> torch.Tensor:
    """The global batch's total loss weight, divided by the world size because DDP averages over ranks."""
    return d.sum(weights.sum().clone()) / d.world


def validate_with(model, vocab, source, args, decoder: str, unconstrained: bool = False) -> dict:
    """Validation metrics with ``decoder``, at the block size, threshold and trace length in the model's config.
    With ``unconstrained``, also the metrics of a decode without the answer constraint (what the model writes
    on its own) and, on the first ``PROBE_USERS``, the teacher-forced mass on banned slots
    (:mod:`recipe.evals.slot_mass`), under the key ``"unconstrained"``."""
    examples = eval_examples(source.sequences, source.item_ids, "valid", args.candidates, args.neg_seed,
                             args.val_users)
    budget = completion_budget(model.config.trace_len, args.candidates)
    cfg = DecodeConfig.for_model(model.config, max_new_tokens=budget)
    val = evaluate(Reranker(model, vocab, source.catalog, decoder, cfg), examples, batch_size=50, progress=False)
    if unconstrained:
        free = DecodeConfig.for_model(model.config, max_new_tokens=budget, constrain_answer=False)
        val["unconstrained"] = evaluate(Reranker(model, vocab, source.catalog, decoder, free), examples,
                                        batch_size=50, progress=False)
        probe = banned_slot_mass(model, vocab, source, examples[:PROBE_USERS], cfg.block_size)
        val["unconstrained"]["banned_mass"] = {view: probe[view]["all"]["mass"] for view in VIEWS}
    return val


def warm_start(ref: str, store: str | None, vocab):
    """The weights of an earlier AR checkpoint, checked to share the vocabulary built from this data
    (the item tokens index the catalog, so a checkpoint from other data would silently mis-rank).
    A checkpoint whose vocabulary is a prefix of this one (a v3 model, before the ``<coN>`` tokens)
    gets new embedding rows for the tokens it lacks and trains on this data's (v4) prompts."""
    from dgr2.model_store import load_checkpoint, resolve_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(ref, store))
    if ckpt.config.decoder != "ar":
        raise SystemExit(f"--init-from {ref}: a {ckpt.config.decoder} checkpoint; warm starts take an AR one")
    if ckpt.vocab.same_tokens(vocab):
        return ckpt.model, ckpt.vocab, str(ckpt.path.name)
    if not vocab.extends(ckpt.vocab):
        raise SystemExit(f"--init-from {ref}: its vocabulary differs from the one built from this data "
                         "(a checkpoint trained on other data or another catalog)")
    ckpt.model.grow_vocab(len(vocab))
    return ckpt.model, vocab, str(ckpt.path.name)


def run(args: argparse.Namespace) -> int:
    from dgr2.model_store import Provenance
    from dgr2.model_store.init import new_model
    from dgr2.recipe.publish import publish

    d = setup_distributed()
    source = load_source(args.data_dir, args.synthetic)
    model, vocab = new_model(source.catalog, args.preset, seed=args.seed)
    parent = None
    if args.init_from:
        model, vocab, parent = warm_start(args.init_from, args.store, vocab)
    trace_len = args.trace_len or model.config.trace_len
    model.config = model.config.replace(trace_len=trace_len)  # a decoding setting: saved in config.json
    # AR training teaches the trace: by the data folder's own rule when it has one (kept in config.json)
    model.config = model.config.replace(evidence_rule=source.rule)
    stream = TrainStream.for_model(vocab, source, args.candidates, model.config, args.seed)
    dev = training_device(args)
    head = OutputHead(model.to(dev), vocab, differentiable=True)  # the head's index tensors follow the model
    steps = args.steps or DEFAULTS["steps"]

    def make_batch(step: int):
        batch = stream.global_batch(step, args.batch_size)[d.rank:: d.world]
        return collate(batch, vocab.pad, args.rank_weight, vocab)

    batches = Prefetcher(make_batch, steps, args.loader_workers)

    def loss(step: int, hidden) -> torch.Tensor:
        ids, targets, weights, banned = (t.to(dev, non_blocking=True) for t in batches.get(step))
        return weighted_ce(head, hidden(ids), targets, weights, global_weight(d, weights), banned)

    def publish_ar(metrics: dict, steps: int):
        prov = Provenance(stage="ar", parent=parent, data_hash=getattr(source, "data_hash", None),
                          metrics={"valid": metrics, "steps": steps})
        version = args.version or f"ar-{args.preset}-s{args.seed}"
        return publish(args.store, args.name, version, ["ar"], model, vocab,
                       source.catalog, prov)

    stage = Stage("ar", model, loss, lambda: validate_with(model, vocab, source, args, "ar"), publish_ar)
    run_stage(stage, args, d, steps, peak_lr(args, DEFAULTS), args.warmup)
    teardown_distributed()
    return 0
