"""``dgr2 train rl``: GRPO-style reinforcement learning of the block-diffusion re-ranker.

    dgr2 train rl --from beauty-gr2:opd --data-dir ../shared/data/amazon-beauty

Each step takes ``--batch-size`` training prompts and samples ``--group`` rollouts of each with the
block-diffusion decoder (temperature ``--temperature``). Reward: NDCG@10 of the guarded ranking
(``--reward-cutoff``: NDCG@K) minus ``--invalid-penalty`` times the share of ranks the guard had to
repair (:mod:`recipe.rollouts`; only rollouts decoded with ``--unconstrained-rollouts`` can be
invalid, and their log-probabilities are then taken under the whole softmax, as they were sampled).
Advantages are the rewards standardised within each group (GRPO). Sequence log-probabilities are the one-step
estimate of :mod:`recipe.policy`; the loss is

    - mean_i A_i * mean_q log pi(y_iq)  +  beta * mean_q k3(pi || pi_ref)

with ``pi_ref`` the frozen starting (OPD) policy and k3 the unbiased, non-negative KL estimator
``r - log r - 1`` of ``r = pi_ref / pi`` per token. The result is stored as ``rl`` and ``diffusion``.
"""

from __future__ import annotations

import argparse
from collections import deque

import torch

from dgr2.flags import at_least
from dgr2.model.output_head import OutputHead
from dgr2.recipe.block_diffusion import collate_diffusion
from dgr2.recipe.data import load_source
from dgr2.recipe.policy import scored_outputs, token_logprobs
from dgr2.recipe.rollouts import Rollout, add_rollout_arguments, decode_rollouts, rollout_config, rollout_mode
from dgr2.recipe.sft import TrainStream
from dgr2.recipe.train_ar import validate_with
from dgr2.recipe.trainer import (
    Stage,
    add_common_arguments,
    frozen,
    peak_lr,
    run_stage,
    setup_distributed,
    teardown_distributed,
)

DEFAULTS = {"steps": 150, "lr": 1e-4}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "rl")
    p.set_defaults(batch_size=4)
    p.add_argument("--from", dest="parent", default="beauty-gr2:opd",
                   help="policy to start from (and KL reference): NAME[:VERSION_OR_ALIAS] or a folder")
    p.add_argument("--group", type=at_least(2), default=4, help="rollouts per prompt (GRPO group)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--beta", type=float, default=0.02, help="KL coefficient to the starting policy")
    p.add_argument("--reward-cutoff", type=at_least(1), default=10,
                   help="reward NDCG@K of the guarded ranking: 10 pays only a target in the top 10, so a group whose "
                        "rollouts all miss it has no advantage; the list length (100) pays every rank")
    p.add_argument("--invalid-penalty", type=float, default=0.5,
                   help="reward penalty for a raw answer the guard had to repair, times the share of ranks it changed")
    add_rollout_arguments(p)
    p.add_argument("--warmup", type=at_least(0), default=5, help="warm-up steps")


def flat_share(rewards: torch.Tensor, group: int) -> float:
    """Share of groups whose rollouts all earned the same reward: they carry no advantage, so no gradient
    but the KL's (how sparse the reward is for this policy)."""
    r = rewards.view(-1, group)
    return float((r.max(dim=1).values - r.min(dim=1).values <= 1e-9).float().mean())


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """Rewards standardised within consecutive groups of ``group`` (zero when a group's rewards are equal)."""
    r = rewards.view(-1, group)
    return ((r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True, unbiased=False) + 1e-6)).view(-1)


def grpo_loss(model, ref, head: OutputHead, ref_head: OutputHead, rollouts: list[Rollout], advantages: torch.Tensor,
              block: int, beta: float, vocab, gen: torch.Generator, hidden=None,
              constrained: bool = True) -> tuple[torch.Tensor, dict]:
    """The GRPO loss of one batch of rollouts (see the module docstring) and its parts; ``constrained`` says
    whether the rollouts were decoded under the slot exclusions (their log-probabilities are taken the same way)."""
    rows = [r.row for r in rollouts]
    b = collate_diffusion(rows, block, vocab.mask, vocab.pad, gen, vocab)
    sel = scored_outputs(b, rows, block)
    hidden = hidden or model.hidden_states
    logp = token_logprobs(head, hidden(b.ids, positions=b.positions, mask=b.mask), b, sel, constrained)
    with torch.no_grad():
        ref_logp = token_logprobs(ref_head, ref.hidden_states(b.ids, positions=b.positions, mask=b.mask), b, sel,
                                  constrained)
    n = sel.sum(dim=1).clamp(min=1)
    seq_logp = logp.sum(dim=1) / n
    log_ratio = torch.where(sel, ref_logp - logp, 0.0)
    k3 = torch.where(sel, log_ratio.exp() - log_ratio - 1, 0.0).sum(dim=1) / n
    pg = -(advantages * seq_logp).mean()
    kl = k3.mean()
    return pg + beta * kl, {"pg": float(pg.detach()), "kl": float(kl.detach())}


def run(args: argparse.Namespace) -> int:
    from dgr2.model_store import Provenance, load_checkpoint, resolve_checkpoint
    from dgr2.recipe.publish import publish

    d = setup_distributed()
    parent = load_checkpoint(resolve_checkpoint(args.parent, args.store))
    ref = frozen(load_checkpoint(parent.path).model)
    model, vocab = parent.model, parent.vocab
    trace_len = args.trace_len or parent.config.trace_len
    model.config = model.config.replace(trace_len=trace_len)  # a decoding setting: saved in config.json
    source = load_source(args.data_dir, args.synthetic)
    stream = TrainStream.for_model(vocab, source, args.candidates, model.config, args.seed)
    head, ref_head = OutputHead(model, vocab, differentiable=True), OutputHead(ref, vocab)
    S = model.config.block_size
    recent: deque[dict] = deque(maxlen=20)  # the last steps' reward, tied groups and KL, for the validations

    def loss(step: int, hidden) -> torch.Tensor:
        batch = stream.examples(step, args.batch_size)[d.rank:: d.world]
        cfg = rollout_config(model.config, args.candidates, args, temperature=args.temperature,
                             seed=args.seed * 1_000_003 + step)
        rollouts = decode_rollouts(model, vocab, stream, batch, cfg, repeats=args.group)
        rewards = torch.tensor([r.reward(args.invalid_penalty, args.reward_cutoff) for r in rollouts])
        gen = torch.Generator().manual_seed(args.seed * 7_919 + step)
        value, parts = grpo_loss(model, ref, head, ref_head, rollouts, group_advantages(rewards, args.group), S,
                                 args.beta, vocab, gen, hidden, constrained=cfg.constrain_answer)
        recent.append({"train_reward": float(rewards.mean()), "train_flat_groups": flat_share(rewards, args.group),
                       "train_kl": parts["kl"]})  # train_kl: how far the policy moved from its start
        return value / d.world

    def validate() -> dict:
        out = validate_with(model, vocab, source, args, "diffusion", unconstrained=args.unconstrained_rollouts)
        if recent:
            out.update({k: sum(r[k] for r in recent) / len(recent) for k in recent[0]})
        return out

    def publish_rl(metrics: dict, steps: int):
        prov = Provenance(stage="rl", parent=str(parent.path.name), data_hash=getattr(source, "data_hash", None),
                          metrics={"valid": metrics, "steps": steps, "group": args.group, "beta": args.beta,
                                   "reward_cutoff": args.reward_cutoff,
                                   "invalid_penalty": args.invalid_penalty,
                                   "rollouts": rollout_mode(args)})
        version = args.version or f"rl-{parent.path.name}"
        return publish(args.store, args.name, version, ["rl", "diffusion"], model, vocab,
                       source.catalog, prov, decoder="diffusion")

    run_stage(Stage("rl", model, loss, validate, publish_rl), args, d, args.steps or DEFAULTS["steps"],
              peak_lr(args, DEFAULTS), args.warmup)
    teardown_distributed()
    return 0
