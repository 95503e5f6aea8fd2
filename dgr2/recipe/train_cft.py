"""``dgr2 train cft``: conversion fine-tuning, AR weights -> block-diffusion re-ranker.

    dgr2 train cft --from beauty-gr2:ar --data-dir ../shared/data/amazon-beauty
    torchrun --nproc-per-node 2 -m dgr2 train cft --from beauty-gr2:ar --data-dir ...

Block-diffusion training on the same SFT sequences (:mod:`recipe.block_diffusion`): per-block
noise levels, complementary masks, the ``[x_0 ; x_t ; x_t']`` attention that is causal on the clean
stream and bidirectional inside each noisy block, and the AR next-token shift. Validation decodes
with the block-diffusion decoder itself. The result is stored with the aliases ``cft`` and
``diffusion``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from dgr2.flags import at_least, fraction, non_negative, positive_int
from dgr2.model.config import ANSWER_TIES, ModelConfig
from dgr2.model.output_head import OutputHead
from dgr2.recipe.block_diffusion import collate_diffusion
from dgr2.recipe.data import load_source
from dgr2.recipe.prefetch import Prefetcher
from dgr2.recipe.sft import TrainStream
from dgr2.recipe.train_ar import global_weight, validate_with, weighted_ce
from dgr2.recipe.trainer import (
    Stage,
    add_common_arguments,
    add_device_arguments,
    add_validity_shape_arguments,
    peak_lr,
    run_stage,
    setup_distributed,
    teardown_distributed,
    training_device,
    validity_term,
)

DEFAULTS = {"steps": 1200, "lr": 1e-3}
# what a conversion of an AR parent (which has no decode settings of its own) stores: the config's defaults
NEW_DECODE = {k: getattr(ModelConfig(), k) for k in ("block_size", "threshold", "answer_threshold")}


def decode_settings(parent: ModelConfig, args: argparse.Namespace) -> dict:
    """The decode settings the conversion stores: each flag given, else a diffusion parent's (a graft, or
    a conversion trained on), else ``NEW_DECODE``."""
    inherited = {k: getattr(parent, k) for k in NEW_DECODE} if parent.decoder == "diffusion" else NEW_DECODE
    return {k: v if (v := getattr(args, k)) is not None else inherited[k] for k in NEW_DECODE}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "cft")
    add_device_arguments(p)
    p.add_argument("--from", dest="parent", default="beauty-gr2:ar",
                   help="AR checkpoint to convert: NAME[:VERSION_OR_ALIAS] or a folder")
    p.add_argument("--block-size", type=positive_int, default=None,
                   help=f"diffusion block size (stored in the checkpoint; default: a diffusion parent's, else "
                        f"{NEW_DECODE['block_size']})")
    p.add_argument("--threshold", type=fraction, default=None,
                   help=f"unmasking threshold (stored in the checkpoint; default: a diffusion parent's, else "
                        f"{NEW_DECODE['threshold']})")
    p.add_argument("--answer-threshold", type=fraction, default=None,
                   help="unmasking threshold inside the answer (stored in the checkpoint; default: a diffusion "
                        "parent's, else --threshold)")
    p.add_argument("--warmup", type=at_least(0), default=30, help="warm-up steps")
    p.add_argument("--validity-weight", type=non_negative, default=0.0,
                   help="weight of -log P(an allowed slot) beside the cross-entropy over allowed slots (0: the "
                        "exclusions stay in the training softmax and validity comes from the decoder's constraint; "
                        "1: plain cross-entropy; above 1: validity weighs more than the ranking); with a weight "
                        "above 0 each validation also decodes unconstrained")
    add_validity_shape_arguments(p)
    p.add_argument("--answer-ties", choices=ANSWER_TIES, default=None,
                   help="how the trained answer orders candidates of equal trace strength: shuffled per example, "
                        "or in ascending slot, the order the trace lists them (default: the parent's; "
                        "saved in the checkpoint's config)")


def run(args: argparse.Namespace) -> int:
    from dgr2.model_store import Provenance, load_checkpoint, resolve_checkpoint
    from dgr2.recipe.publish import publish

    d = setup_distributed()
    parent = load_checkpoint(resolve_checkpoint(args.parent, args.store))
    model, vocab = parent.model, parent.vocab
    model.config = model.config.replace(**decode_settings(parent.config, args))
    # each given, else the parent's; trace_len is a decoding setting too, saved in config.json
    model.config = model.config.replace(trace_len=args.trace_len or parent.config.trace_len,
                                        answer_ties=args.answer_ties or parent.config.answer_ties)
    block = model.config.block_size  # training's blocks are the decoder's
    source = load_source(args.data_dir, args.synthetic)
    stream = TrainStream.for_model(vocab, source, args.candidates, model.config, args.seed)
    dev = training_device(args)
    head = OutputHead(model.to(dev), vocab, differentiable=True)  # the head's index tensors follow the model
    steps = args.steps or DEFAULTS["steps"]
    validity = validity_term(args)

    def make_batch(step: int):
        batch = stream.global_batch(step, args.batch_size)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # same noise on every rank
        b = collate_diffusion(batch, block, vocab.mask, vocab.pad, gen, vocab)
        shard = slice(d.rank, None, d.world)
        return b.ids[shard], b.positions[shard], b.mask[shard], b.targets[shard], b.weights[shard], b.banned[shard]

    batches = Prefetcher(make_batch, steps, args.loader_workers)

    def loss(step: int, hidden) -> torch.Tensor:
        ids, positions, mask, targets, weights, banned = (t.to(dev, non_blocking=True) for t in batches.get(step))
        h = hidden(ids, positions=positions, mask=mask)
        return weighted_ce(head, h, targets, weights, global_weight(d, weights), banned, validity)

    def validate() -> dict:
        return validate_with(model, vocab, source, args, "diffusion", unconstrained=args.validity_weight > 0)

    def publish_cft(metrics: dict, steps: int):
        prov = Provenance(stage="cft", parent=str(parent.path.name), data_hash=getattr(source, "data_hash", None),
                          metrics={"valid": metrics, "steps": steps, "validity": asdict(validity)})
        version = args.version or f"cft-{parent.path.name}"
        return publish(args.store, args.name, version, ["cft", "diffusion"], model, vocab,
                       source.catalog, prov, decoder="diffusion")

    run_stage(Stage("cft", model, loss, validate, publish_cft), args, d, steps, peak_lr(args, DEFAULTS),
              args.warmup)
    teardown_distributed()
    return 0
