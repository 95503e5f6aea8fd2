"""Probe: can a model of the ``small`` preset learn the answer step "name the strongest open slot"?

The AR re-ranker learns to write the trace's per-candidate strengths (96-98% correct on Beauty) and
still does not sort its answer by them. This isolates that step on synthetic sequences: the trace
is given (not predicted), 100 entries in one of the layouts below with strengths drawn like
Beauty's (mostly low), then the answer (slots by decreasing strength, ties shuffled) under the
decoder's slot exclusions. The loss covers the answer only; every ``--every`` steps it prints the
fraction of the first 10 teacher-forced answer steps whose pick has the highest open strength
(chance ~0.03; the layout is learnt when it nears 1).

    python scripts/answer_sort_probe.py --layout twice --steps 600
    python scripts/answer_sort_probe.py --candidates 300:10,300:30,100 --steps 900   # curriculum on K

Layouts: ``twice`` ``<cK> <vN> <cK>`` (the trace's), ``once`` ``<cK> <vN>``, ``after`` ``<vN> <cK>``,
``fused`` ``<cK> <cK:vN>`` (one token per slot and strength: a one-hop lookup).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from dgr2.model.config import ModelConfig
from dgr2.model.transformer import Transformer

K, LEVELS = 100, 10
THINK, ANSWER = 1, 2
SLOT0, LEVEL0, FUSED0 = 10, 10 + K, 10 + K + LEVELS
STRENGTH_P = torch.tensor([.35, .25, .12, .08, .06, .05, .04, .03, .015, .005])  # ~ Beauty's levels


def example(layout: str, rng: torch.Generator, n: int = K) -> tuple[list[int], int, list[int]]:
    """One sequence over ``n`` candidates (slots 0..n-1), its answer start and the strengths."""
    lv = torch.multinomial(STRENGTH_P, n, replacement=True, generator=rng).tolist()
    tie = random.Random(int(torch.randint(0, 2**30, (1,), generator=rng))).sample(range(n), n)
    entries = {
        "twice": lambda k: [SLOT0 + k, LEVEL0 + lv[k], SLOT0 + k],
        "once": lambda k: [SLOT0 + k, LEVEL0 + lv[k]],
        "after": lambda k: [LEVEL0 + lv[k], SLOT0 + k],
        "fused": lambda k: [SLOT0 + k, FUSED0 + LEVELS * k + lv[k]],
    }[layout]
    seq = [THINK] + [t for k in range(n) for t in entries(k)] + [ANSWER]
    start = len(seq)
    seq += [SLOT0 + k for k in sorted(range(n), key=lambda k: (-lv[k], tie[k]))]
    return seq, start, lv


def batch(layout: str, size: int, rng: torch.Generator, n: int = K, device: str = "cpu"):
    exs = [example(layout, rng, n) for _ in range(size)]
    return (torch.tensor([e[0] for e in exs], device=device), exs[0][1],
            torch.tensor([e[2] for e in exs], device=device))


def answer_logits(model: Transformer, ids: torch.Tensor, start: int, n: int = K):
    """Slot logits of every answer step under the exclusions, its targets and the exclusions."""
    logits = model.lm_head(model.hidden_states(ids)[:, start - 1:-1]).float()[:, :, SLOT0:SLOT0 + n]
    target = ids[:, start:] - SLOT0
    named = torch.zeros(*target.shape, n, dtype=torch.bool, device=ids.device)
    named[:, 1:] = F.one_hot(target, n).cumsum(1)[:, :-1].bool()
    return logits.masked_fill(named, float("-inf")), target, named


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layout", choices=["twice", "once", "after", "fused"], default="twice")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--candidates", default=str(K),
                   help="candidates per sequence; a curriculum as STEPS:N,...,N (e.g. 2000:10,2000:30,100)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--time-budget-s", type=float, default=None, help="stop after this many seconds")
    args = p.parse_args()
    stages = [tuple(int(x) for x in part.split(":")) if ":" in part else (args.steps, int(part))
              for part in args.candidates.split(",")]

    def candidates_at(step: int) -> int:
        for until, n in stages:
            if step <= until or (until, n) == stages[-1]:
                return n
            step -= until
        return stages[-1][1]

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=FUSED0 + K * LEVELS, hidden_size=192, intermediate_size=576, num_hidden_layers=4,
                      num_attention_heads=6, num_key_value_heads=3, head_dim=32, max_position_embeddings=1024)
    model = Transformer(cfg).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = torch.Generator().manual_seed(1)
    test_ids, test_start, test_lv = batch(args.layout, 64, rng, K, args.device)  # always at the full K
    t0 = time.time()
    for step in range(1, args.steps + 1):
        n = candidates_at(step)
        ids, start, _ = batch(args.layout, args.batch_size, rng, n, args.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
            logits, target, _ = answer_logits(model, ids, start, n)
        w = torch.ones(target.shape, device=args.device)
        w[:, :20] = 3.0  # the top of the ranking is where NDCG is decided
        loss = (F.cross_entropy(logits.reshape(-1, n), target.reshape(-1), reduction="none") * w.reshape(-1)).sum()
        loss = loss / w.sum()
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 30)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                lg, _, named = answer_logits(model, test_ids, test_start)
            pick = lg[:, :10].argmax(-1)
            open_lv = test_lv[:, None, :].expand(-1, 10, -1).masked_fill(named[:, :10], -1)
            ok = (test_lv.gather(1, pick) == open_lv.max(-1).values).float().mean().item()
            print(f"{args.layout} step {step} K {n} loss {loss.item():.3f} strongest-open-slot@100 {ok:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        if args.time_budget_s and time.time() - t0 > args.time_budget_s:
            print(f"time budget reached at step {step}", flush=True)
            break


if __name__ == "__main__":
    main()
