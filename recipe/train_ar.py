"""``dgr2 train ar``: supervised fine-tuning of the AR re-ranker from scratch (the GR2 stand-in).

    dgr2 train ar --data-dir ../shared/data/amazon-beauty                  # one process, CPU
    torchrun --nproc-per-node 2 -m dgr2cli train ar --data-dir ...           # DDP (gloo on CPU)

Teacher-forced next-token loss on the completion (trace, ranking, ``<eos>``), with extra weight on
the first ranked slot, where NDCG is decided. Resumable from ``--run-dir``; validation NDCG@10 and
raw validity on ``--val-users`` validation users every ``--eval-every`` steps; the final weights go
to the model store with a manifest and the alias ``ar``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from model.decoding import DecodeConfig
from model.engine import Reranker
from model.output_head import OutputHead
from model.transformer import Transformer
from recipe.data import eval_examples
from recipe.evaluate import decode_budget, evaluate, load_source
from recipe.sft import TrainStream, collate
from recipe.traces import DEFAULT_TRACE_LEN
from recipe.trainer import RunDir, add_common_arguments, lr_at, setup_distributed, teardown_distributed

DEFAULTS = {"steps": 600, "lr": 2e-3, "preset": "small"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "ar")
    p.add_argument("--preset", default=DEFAULTS["preset"], help="architecture preset (tiny, small, base)")
    p.add_argument("--rank-weight", type=float, default=5.0, help="loss weight of the first ranked slot")
    p.add_argument("--warmup", type=int, default=30, help="warm-up steps")


def sequence_loss(hidden, head: OutputHead, ids, targets, weights, total_weight: torch.Tensor) -> torch.Tensor:
    """Weighted next-token cross-entropy over the global batch, on the output vocabulary, with logits
    only where the weight is non-zero."""
    h = hidden(ids)
    sel = weights > 0
    cols = head.col_of[targets[sel]]
    if bool((cols < 0).any()):
        raise ValueError("a completion target lies outside the output vocabulary")
    ce = F.cross_entropy(head(h[sel]), cols, reduction="none")
    return (ce * weights[sel]).sum() / total_weight


class HiddenStates(torch.nn.Module):
    """DDP synchronises gradients through ``forward``: route it to the hidden states, so the loss
    computes logits only at the positions it needs."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.hidden_states(ids)


def validate(model: Transformer, vocab, source, args, trace_len: int) -> dict:
    examples = eval_examples(source.sequences, source.item_ids, "valid", args.candidates, args.neg_seed,
                             args.val_users)
    cfg = DecodeConfig(max_new_tokens=decode_budget(trace_len, args.candidates))
    model.eval()
    try:
        return evaluate(Reranker(model, vocab, source.catalog, "ar", cfg), examples, batch_size=50, progress=False)
    finally:
        model.train()


def run(args: argparse.Namespace) -> int:
    from model_store import Provenance
    from model_store.init import new_model
    from recipe.publish import publish

    d = setup_distributed()
    steps = args.steps or DEFAULTS["steps"]
    lr = args.lr or DEFAULTS["lr"]
    trace_len = args.trace_len or DEFAULT_TRACE_LEN
    source = load_source(args.data_dir, args.synthetic)
    model, vocab = new_model(source.catalog, args.preset, seed=args.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    run_dir = RunDir(args.run_dir, d.main)
    state = None if args.fresh else run_dir.load_state()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        if d.main:
            print(f"resuming {args.run_dir} at step {start}", flush=True)
    hidden = DDP(HiddenStates(model)) if d.world > 1 else model.hidden_states
    stream = TrainStream(vocab, source, args.candidates, trace_len, args.seed)
    head = OutputHead(model, vocab, differentiable=True)
    t_start = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train ar", disable=not d.main,
               dynamic_ncols=True)
    step = start
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, args.warmup)
        ids, targets, weights = collate(stream.global_batch(step, args.batch_size)[d.rank:: d.world], vocab.pad,
                                        args.rank_weight)
        total = d.sum(weights.sum().clone()) / d.world  # DDP averages over ranks: scale back to a global mean
        loss = sequence_loss(hidden, head, ids, targets, weights, total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = d.sum(loss.detach().clone()).item() / d.world
        bar.set_postfix(loss=f"{loss_value:.4f}")
        record = {"stage": "ar", "step": step + 1, "loss": round(loss_value, 5), "lr": round(g["lr"], 7)}
        out_of_time = args.time_budget_min and time.time() - t_start > args.time_budget_min * 60
        done = step + 1 == steps or bool(d.sum(torch.tensor(float(bool(out_of_time)))).item())
        if d.main and ((step + 1) % args.eval_every == 0 or done):
            val = validate(model, vocab, source, args, trace_len)
            record.update({"val_ndcg@10": val["ndcg@10"], "val_valid_raw": val["valid_raw"]})
            bar.write(f"step {step + 1}: loss {loss_value:.4f} val ndcg@10 {val['ndcg@10']:.4f}")
        run_dir.log(record)
        if (step + 1) % args.save_every == 0 or done:
            run_dir.save_state({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1})
        if done:
            break
    bar.close()
    if d.main:
        final = validate(model, vocab, source, args, trace_len)
        prov = Provenance(stage="ar", data_hash=getattr(source, "data_hash", None),
                          metrics={"valid": final, "steps": step + 1, "trace_len": trace_len})
        path = publish(args.store, args.name, f"ar-{args.preset}-s{args.seed}", "ar", model, vocab,
                       source.catalog, prov)
        print(f"saved {path}", flush=True)
    d.barrier()
    teardown_distributed()
    return 0
