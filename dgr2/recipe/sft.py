"""Supervised sequences for the re-ranker: prompt + trace + ranking, and batches of them.

The data source is anything with ``catalog``, ``sequences``, ``item_ids`` and ``pairs`` (the
Beauty data or the synthetic data). Training examples are drawn from the leave-one-out training
prefixes with fresh negatives; the loss covers the completion only (trace, answer, ``<eos>``).
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import torch

from dgr2.model.catalog import Catalog
from dgr2.model.config import DEFAULT_ANSWER_TIES, AnswerTies, ModelConfig
from dgr2.model.prompt import render_completion, render_prompt
from dgr2.model.slot_rule import banned_slots
from dgr2.model.tokenizer import MAX_SLOTS, Vocab
from dgr2.recipe.data import RULE_FILE, Example, UserView, train_example, train_prefixes
from dgr2.recipe.traces import DEFAULT_TRACE_LEN, EvidenceRule, evidence, rule_for, sft_target


class Source(Protocol):
    catalog: Catalog
    sequences: dict[str, list[str]]
    item_ids: list[str]
    pairs: Counter
    counts: Counter
    rule: dict | None  # a fitted evidence rule (recipe.data.RULE_FILE), or None


@dataclass
class Encoded:
    ids: list[int]
    prompt_len: int  # the loss starts here
    answer_start: int  # index of the first ranked slot (the decisive token)
    num_slots: int = MAX_SLOTS


def encode(vocab: Vocab, source: Source, ex: Example, trace_len: int = DEFAULT_TRACE_LEN,
           own_sequence: list[str] | None = None, rule: EvidenceRule | None = None,
           ties: AnswerTies = DEFAULT_ANSWER_TIES) -> Encoded:
    """Token ids of one supervised sequence; training examples pass the user's ``own_sequence``
    (training part), which is left out of popularity and links (:class:`recipe.data.UserView`).
    ``rule``: the evidence rule of the trace (default: the prompt version's); ``ties``: how the answer
    orders equal strengths (:func:`recipe.traces.sft_target`)."""
    items = source.catalog if own_sequence is None else UserView(source.catalog, source.counts, source.pairs,
                                                                 own_sequence)
    prompt = render_prompt(vocab, items, ex.history, ex.candidates)
    tie_seed = zlib.crc32(" ".join([*ex.history[-1:], *ex.candidates]).encode())  # fixed per example
    evs = evidence(items, ex.history, ex.candidates, rule or rule_for(vocab))
    trace, ranking = sft_target(evs, ex.target_slot, trace_len, tie_seed, ties)
    completion = vocab.ids(render_completion(trace, ranking))
    return Encoded(prompt.ids + completion, len(prompt.ids), len(prompt.ids) + len(trace) + 2, prompt.num_slots)


def trace_rule(config: ModelConfig, vocab: Vocab, source: Source) -> EvidenceRule:
    """The evidence rule a stage trains a model's traces by: the model's own (``config.evidence_rule``, else
    the prompt version's). A data folder with a fitted rule of its own (``recipe.data.RULE_FILE``) must
    agree, so that one model's traces never mix two rules (SystemExit naming both otherwise)."""
    if source.rule is not None and source.rule != config.evidence_rule:
        raise SystemExit(f"the data folder's {RULE_FILE} is not the evidence rule this model was trained with "
                         f"({config.evidence_rule or 'the prompt version’s own'}); train the AR model on this "
                         "folder first, or use a folder without the file")
    return rule_for(vocab, config.evidence_rule)


class TrainStream:
    """Endless, seeded stream of training sequences (each rank of a distributed run sees its shard
    of the same global batches, so 1 process and N processes train on identical data)."""

    def __init__(self, vocab: Vocab, source: Source, num_candidates: int, trace_len: int, seed: int,
                 rule: EvidenceRule | None = None, ties: AnswerTies = DEFAULT_ANSWER_TIES) -> None:
        self.vocab, self.source, self.rule, self.ties = vocab, source, rule, ties
        self.k, self.trace_len = num_candidates, trace_len
        self.prefixes = train_prefixes(source.sequences)
        if not self.prefixes:
            raise ValueError("no training prefixes: sequences need at least 4 items")
        self.seed = seed

    @classmethod
    def for_model(cls, vocab: Vocab, source: Source, num_candidates: int, config: ModelConfig,
                  seed: int) -> TrainStream:
        """The stream a training stage feeds a model: its trace length, its evidence rule
        (:func:`trace_rule`) and its answer's tie order, all from its config."""
        return cls(vocab, source, num_candidates, config.trace_len, seed, trace_rule(config, vocab, source),
                   config.answer_ties)

    def examples(self, step: int, batch_size: int) -> list[tuple[Example, list[str]]]:
        """The step's global batch as (example, the user's training sequence) pairs."""
        rng = random.Random(f"{self.seed}:{step}")
        out = []
        for _ in range(batch_size):
            user, cut = self.prefixes[rng.randrange(len(self.prefixes))]
            ex = train_example(self.source.sequences, self.source.item_ids, user, cut, self.k, rng)
            out.append((ex, self.source.sequences[user][:-2]))
        return out

    def global_batch(self, step: int, batch_size: int) -> list[Encoded]:
        return self.encoded(self.examples(step, batch_size))

    def encoded(self, examples: list[tuple[Example, list[str]]]) -> list[Encoded]:
        """Training rows of (example, own sequence) pairs as the data writes them: the rule's trace, the true answer."""
        return [encode(self.vocab, self.source, ex, self.trace_len, own_sequence=own, rule=self.rule, ties=self.ties)
                for ex, own in examples]

    def view(self, own_sequence: list[str]) -> UserView:
        return UserView(self.source.catalog, self.source.counts, self.source.pairs, own_sequence)


def slot_exclusions(vocab: Vocab, e: Encoded, T: int) -> torch.Tensor:
    """``[T, MAX_SLOTS]``: the slots position ``t``'s prediction may not name, as the AR decoder's
    constraint sees them (:mod:`model.slot_rule`). Training under the same
    exclusions makes each ranking step a softmax over the remaining candidates (a Plackett-Luce
    likelihood), so the model only has to score them."""
    in_request = torch.arange(MAX_SLOTS) < e.num_slots
    ban = (~in_request).expand(T, MAX_SLOTS).clone()
    comp = e.ids[e.prompt_len:]
    if not comp:
        return ban
    slots = [vocab.slot_of(tok) for tok in comp]
    slot = torch.tensor([-1 if k is None or k >= MAX_SLOTS else k for k in slots])
    named = torch.zeros(len(comp), MAX_SLOTS + 1, dtype=torch.long)  # the extra column takes non-slots
    named[torch.arange(len(comp)), torch.where(slot >= 0, slot, MAX_SLOTS)] = 1
    uses = named[:, :MAX_SLOTS].cumsum(0)  # uses up to and including each completion token
    a = comp.index(vocab.answer) if vocab.answer in comp else len(comp)
    in_answer = torch.arange(len(comp)) >= a  # what position t predicts, token t + 1, lies after <answer>
    if a < len(comp):  # the answer's section starts over: uses are counted from <answer> on
        uses[a:] -= uses[a - 1] if a > 0 else 0
    ban[e.prompt_len: e.prompt_len + len(comp)] = banned_slots(uses, in_answer, in_request)
    return ban


def collate(batch: list[Encoded], pad_id: int, rank_weight: float = 1.0, vocab: Vocab | None = None):
    """Right-padded ids ``[B, T]``, next-token targets and per-position loss weights ``[B, T]``;
    with ``vocab``, also the slot exclusions ``[B, T, MAX_SLOTS]`` (:func:`slot_exclusions`).

    Position ``t`` predicts token ``t + 1``; weights are 1 on the completion, ``rank_weight`` on the
    prediction of the first ranked slot, 0 on the prompt and padding.
    """
    T = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    weights = torch.zeros(len(batch), T)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        weights[i, e.prompt_len - 1: len(e.ids) - 1] = 1.0
        weights[i, e.answer_start - 1] = rank_weight
    targets = torch.cat([ids[:, 1:], torch.full((len(batch), 1), pad_id, dtype=torch.long)], dim=1)
    if vocab is None:
        return ids, targets, weights
    return ids, targets, weights, torch.stack([slot_exclusions(vocab, e, T) for e in batch])
