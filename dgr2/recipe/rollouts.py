"""On-policy rollouts for OPD and RL: the student decodes training prompts with the inference
decoder, and each decoded sequence becomes a training row (:class:`recipe.sft.Encoded`) and a reward.

Reward (RL): NDCG@10 of the guarded ranking (``--reward-cutoff``: NDCG@K), minus ``invalid_penalty``
times the share of ranks the guard had to change (:attr:`model.prompt.AnswerParse.wrong_fraction`),
so the policy is paid for rankings that need no repair, and for each rank closer to one. The penalty
acts only on rollouts decoded without the answer constraint (``--unconstrained-rollouts``): the
constrained decoder cannot write an invalid answer.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dgr2.model.decoding import DecodeConfig, completion_budget
from dgr2.model.diffusion_decoder import decode_diffusion
from dgr2.model.guard import guard
from dgr2.model.prompt import parse_answer, render_prompt
from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer
from dgr2.recipe.data import Example
from dgr2.recipe.metrics import ndcg_at
from dgr2.recipe.sft import Encoded, TrainStream


@dataclass
class Rollout:
    row: Encoded  # prompt + the decoded continuation
    target_slot: int
    rank: int  # the target's 0-based place in the guarded ranking
    wrong_fraction: float = 0.0  # share of the ranks the guard changed (0 exactly when the raw answer is valid)

    @property
    def valid_raw(self) -> bool:
        return self.wrong_fraction == 0

    @property
    def ndcg10(self) -> float:
        return ndcg_at(self.rank, 10)

    def reward(self, invalid_penalty: float, cutoff: int = 10) -> float:
        """NDCG@``cutoff`` less the penalty; a cutoff past the list's length pays every rank (never 0)."""
        return ndcg_at(self.rank, cutoff) - invalid_penalty * self.wrong_fraction


def add_rollout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unconstrained-rollouts", action="store_true",
                   help="decode the rollouts without the answer constraint, so the model trains on the answers "
                        "it writes by itself, duplicates included (validity learned, not imposed); each "
                        "validation then also decodes unconstrained")


def rollout_mode(args: argparse.Namespace) -> str:
    """How the rollouts were decoded, as a run's manifest records it."""
    return "unconstrained" if args.unconstrained_rollouts else "constrained"


def rollout_config(config, candidates: int, args: argparse.Namespace, **sampling) -> DecodeConfig:
    """The rollouts' decoding: the model's own block size and thresholds, a whole completion's budget at its
    trace length, with or without the answer constraint as ``args`` say."""
    return DecodeConfig.for_model(config, max_new_tokens=completion_budget(config.trace_len, candidates),
                                  constrain_answer=not args.unconstrained_rollouts, **sampling)


def decode_rollouts(model: Transformer, vocab: Vocab, stream: TrainStream, batch: list[tuple[Example, list[str]]],
                    cfg: DecodeConfig, repeats: int = 1, cut_at_first_fault: bool = False) -> list[Rollout]:
    """``repeats`` decodes of every example (consecutive, a GRPO group each), with ``cfg``'s sampling. With
    ``cut_at_first_fault`` a row ends at the first answer token naming a used or foreign slot: training sees
    that mistake, made from a valid prefix, and never the contexts that follow it (the reward still scores
    the whole answer)."""
    prompts, slots, examples = [], [], []
    for ex, own in batch:
        p = render_prompt(vocab, stream.view(own), ex.history, ex.candidates)
        for _ in range(repeats):
            prompts.append(p.ids)
            slots.append(p.num_slots)
            examples.append(ex)
    was_training = model.training
    model.eval()
    results = decode_diffusion(model, vocab, prompts, slots, cfg)
    model.train(was_training)
    out = []
    for ids, k, ex, res in zip(prompts, slots, examples, results, strict=True):
        parse = parse_answer(vocab, res.tokens, k)
        ranking, _ = guard(parse, res.slot_logprobs)
        rank = ranking.index(ex.target_slot)  # 0-based, as recipe.metrics counts
        tokens = list(res.tokens)
        if cut_at_first_fault and parse.first_fault is not None:
            tokens = tokens[: parse.first_fault + 1]
        start = len(ids) + (parse.start + 1 if parse.start is not None else len(tokens))
        row = Encoded(list(ids) + tokens, len(ids), min(start, len(ids) + len(tokens) - 1), k)
        out.append(Rollout(row, ex.target_slot, rank, parse.wrong_fraction))
    return out
