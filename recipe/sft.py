"""Supervised sequences for the re-ranker: prompt + trace + ranking, and batches of them.

The data source is anything with ``catalog``, ``sequences``, ``item_ids`` and ``pairs`` (the
Beauty data or the synthetic data). Training examples are drawn from the leave-one-out training
prefixes with fresh negatives; the loss covers the completion only (trace, answer, ``<eos>``).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import torch

from model.catalog import Catalog
from model.prompt import render_completion, render_prompt
from model.tokenizer import Vocab
from recipe.data import Example, UserView, train_example, train_prefixes
from recipe.traces import DEFAULT_TRACE_LEN, evidence, sft_target


class Source(Protocol):
    catalog: Catalog
    sequences: dict[str, list[str]]
    item_ids: list[str]
    pairs: Counter
    counts: Counter


@dataclass
class Encoded:
    ids: list[int]
    prompt_len: int  # the loss starts here
    answer_start: int  # index of the first ranked slot (the decisive token)


def encode(vocab: Vocab, source: Source, ex: Example, trace_len: int = DEFAULT_TRACE_LEN,
           own_sequence: list[str] | None = None) -> Encoded:
    """Token ids of one supervised sequence; training examples pass the user's ``own_sequence``
    (training part), which is left out of popularity and links (:class:`recipe.data.UserView`)."""
    items = source.catalog if own_sequence is None else UserView(source.catalog, source.counts, source.pairs,
                                                                 own_sequence)
    prompt = render_prompt(vocab, items, ex.history, ex.candidates)
    trace, ranking = sft_target(evidence(items, ex.history, ex.candidates), ex.target_slot, trace_len)
    completion = vocab.ids(render_completion(trace, ranking))
    return Encoded(prompt.ids + completion, len(prompt.ids), len(prompt.ids) + len(trace) + 2)


class TrainStream:
    """Endless, seeded stream of training sequences (each rank of a distributed run sees its shard
    of the same global batches, so 1 process and N processes train on identical data)."""

    def __init__(self, vocab: Vocab, source: Source, num_candidates: int, trace_len: int, seed: int) -> None:
        self.vocab, self.source = vocab, source
        self.k, self.trace_len = num_candidates, trace_len
        self.prefixes = train_prefixes(source.sequences)
        if not self.prefixes:
            raise ValueError("no training prefixes: sequences need at least 4 items")
        self.seed = seed

    def global_batch(self, step: int, batch_size: int) -> list[Encoded]:
        rng = random.Random(f"{self.seed}:{step}")
        out = []
        for _ in range(batch_size):
            user, cut = self.prefixes[rng.randrange(len(self.prefixes))]
            seq = self.source.sequences[user]
            ex = train_example(self.source.sequences, self.source.item_ids, user, cut, self.k, rng)
            out.append(encode(self.vocab, self.source, ex, self.trace_len, own_sequence=seq[:-2]))
        return out


def collate(batch: list[Encoded], pad_id: int, rank_weight: float = 1.0):
    """Right-padded ids ``[B, T]``, next-token targets and per-position loss weights ``[B, T]``.

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
    return ids, targets, weights
