"""What both decoders share: settings, per-sequence results, batch bookkeeping and the prefill.

Batches hold prompts of different lengths (right-padded; each sequence commits only its own
length) and different candidate counts K. Finished sequences leave the batch at once
(:meth:`Batch.drop_finished`) so neither decoder spends forward passes on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dgr2.kernels import answer_scores
from dgr2.model.config import ModelConfig
from dgr2.model.kv_cache import KVCache
from dgr2.model.output_head import OutputHead
from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer


@dataclass
class DecodeConfig:
    """How a batch is decoded. Fields marked *diffusion* only matter to the block-diffusion decoder;
    their measured effects are in docs/design.md ("Decoding") and docs/benchmarks.md."""

    max_new_tokens: int = 1024  # the decode budget (trace + answer); the engine caps it by the model's trace length
    block_size: int = 32  # diffusion: positions denoised together
    threshold: float = 0.9  # diffusion: unmask every position this confident (> 1: one per pass)
    answer_threshold: float | None = None  # diffusion: the threshold after a decided <answer> (None: threshold)
    ignore_eos: bool = False  # write exactly max_new_tokens (throughput-versus-length sweeps)
    constrain_answer: bool = True  # apply the slot rule and, for AR, the answer grammar
    answer_grammar: bool = True  # diffusion, with constrain_answer: the answer grammar by position
    temperature: float = 0.0  # diffusion: 0 greedy; > 0 samples each position (RL rollouts)
    fuse_commit: bool = True  # diffusion: commit a full block in the next block's first pass (same decode)
    seed: int = 0  # sampling seed when temperature > 0
    causal_first_rank: bool = True  # diffusion: rank 1 is predicted from the view AR has (nothing after it)
    # diffusion: a denoising pass computes only the positions whose output it reads or whose token changed,
    # and reuses the other positions' keys and values from the pass that last computed them (approximate
    # inside the block; a committed block is still computed whole, so the prefix cache stays exact)
    block_cache: bool = False
    # diffusion: an answer position whose pick an earlier position of the same pass takes picks again among
    # the slots left (the threshold on the renormalised probability) instead of waiting for the next pass
    answer_claims: bool = True
    # diffusion, with answer_claims: the ranks before this one (the head a re-ranker's client shows) are
    # decided first and without claims, the others wait for them (1: every rank claims); measured in
    # docs/design.md ("Answer claims")
    claims_from_rank: int = 11

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.block_size < 1:
            raise ValueError("max_new_tokens and block_size must be positive")
        if self.answer_threshold is not None and not self.constrain_answer:
            raise ValueError("answer_threshold needs constrain_answer (the answer section comes from it)")

    @classmethod
    def for_model(cls, config: ModelConfig, **overrides) -> DecodeConfig:
        """The checkpoint's own block size and thresholds, with every override that is not ``None``. An
        unconstrained decode (``constrain_answer=False``) leaves the checkpoint's answer threshold out: the
        answer section it applies to comes from the constraint."""
        fields = {"block_size": config.block_size, "threshold": config.threshold,
                  "answer_threshold": config.answer_threshold}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        if not fields.get("constrain_answer", True) and overrides.get("answer_threshold") is None:
            fields["answer_threshold"] = None
        return cls(**fields)


def completion_budget(trace_len: int, num_candidates: int) -> int:
    """Tokens a full completion needs: the trace, ``</think> <answer>``, K slots, ``</answer> <eos>``,
    and a little slack."""
    return trace_len + num_candidates + 8


@dataclass
class SequenceResult:
    tokens: list[int]  # the continuation after the prompt, up to and including <eos> when it stopped
    slot_logprobs: np.ndarray  # [len(tokens), K]: log-probs over the K slots when each token was decided
    forward_passes: int  # passes this sequence took part in, prefill included
    unmasked_per_step: list[int] = field(default_factory=list)  # diffusion: tokens decided per denoising step
    # with record_passes: per output position, the pass that decided it (0 = the prefill), counted
    # over the passes this sequence took part in; None when not recorded
    decided_at: list[int] | None = None

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)


class Batch:
    """Device-side state of the sequences still decoding, indexed by their row in the batch.

    ``alive[i]`` is the original index (in the caller's list) of row ``i``; the output buffers are
    indexed by original index, so dropping rows never moves results.
    """

    def __init__(self, model: Transformer, vocab: Vocab, prompts: list[list[int]], num_slots: list[int],
                 max_new: int, block: int, record_passes: bool = False, budgets: list[int] | None = None) -> None:
        if len(prompts) != len(num_slots) or not prompts:
            raise ValueError("need one num_slots per prompt, and at least one prompt")
        if any(not 1 <= k <= len(vocab.slot_ids) for k in num_slots):
            raise ValueError("num_slots out of range")
        dev = model.device
        self.model, self.vocab, self.dev = model, vocab, dev
        B, self.kmax = len(prompts), max(num_slots)
        self.prompt_len = max(len(p) for p in prompts)
        capacity = self.prompt_len + max_new + block
        if capacity > model.config.max_position_embeddings:
            raise ValueError(f"prompt ({self.prompt_len}) + {max_new} new tokens exceed the model's "
                             f"{model.config.max_position_embeddings} positions")
        self.cache = KVCache(model.config, B, capacity, dev, model.model.embed_tokens.weight.dtype)
        self.alive = torch.arange(B, device=dev)
        self.k = torch.tensor(num_slots, device=dev)
        self.head = OutputHead(model, vocab)
        self.slot_cols = self.head.cols(vocab.slot_ids[: self.kmax])  # logit columns of <c1>..<cKmax>
        # slot index of every token id (kmax for the rest): slot uses are counted with one scatter
        self.slot_index = torch.full((len(vocab),), self.kmax, dtype=torch.long, device=dev)
        self.slot_index[torch.tensor(vocab.slot_ids[: self.kmax], device=dev)] = torch.arange(self.kmax, device=dev)
        self.out_tokens = torch.full((B, max_new + block), vocab.pad, dtype=torch.long, device=dev)
        self.out_scores = torch.zeros((B, max_new + block, self.kmax), dtype=torch.float32, device=dev)
        self.length = torch.zeros(B, dtype=torch.long, device=dev)  # final continuation length
        self.passes = torch.zeros(B, dtype=torch.long, device=dev)
        # each row's own completion budget (at most max_new): a row's decode must not depend on its batch-mates
        if budgets is not None and (len(budgets) != B or max(budgets) > max_new or min(budgets) < 1):
            raise ValueError("need one budget in [1, max_new_tokens] per prompt")
        self.budget = torch.tensor(budgets or [max_new] * B, dtype=torch.long, device=dev)
        # only allocated when asked for: decoders test it for None, so an unrecorded decode does no work for it
        self.decided_at = torch.full((B, max_new + block), -1, dtype=torch.long, device=dev) if record_passes else None
        self.prompts = prompts

    def logits(self, block: torch.Tensor, causal: torch.Tensor | None = None,
               visible: torch.Tensor | None = None, query_index: torch.Tensor | None = None,
               block_len: int | None = None) -> torch.Tensor:
        """One forward pass of a block ``[b, S]`` against the cache: output-vocabulary logits ``[b, S, n_out]``;
        ``causal`` / ``visible`` per row as in :mod:`kernels.block_attention`; with ``query_index``,
        ``block`` holds only those positions of a block ``block_len`` wide."""
        self.passes[self.alive] += 1
        return self.head(self.model.hidden_states(block, cache=self.cache, causal=causal, visible=visible,
                                                  query_index=query_index, block_len=block_len))

    def prefill(self) -> torch.Tensor:
        """Causal pass over the right-padded prompts; returns the logits that predict token 0 ``[B, n_out]``."""
        B = len(self.prompts)
        ids = torch.full((B, self.prompt_len), self.vocab.pad, dtype=torch.long)
        for i, p in enumerate(self.prompts):
            ids[i, : len(p)] = torch.tensor(p)
        lens = torch.tensor([len(p) for p in self.prompts], device=self.dev)
        h = self.model.hidden_states(ids.to(self.dev), cache=self.cache)  # [B, L, H]
        self.cache.commit(lens)
        self.passes += 1
        return self.head(h[torch.arange(B, device=self.dev), lens - 1])  # only the last position needs logits

    def scores(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Slot log-probs ``[n, N, Kmax]`` of logits ``[n, N, n_out]``; ``rows`` index the alive rows
        the logits belong to (default: all of them, in order)."""
        alive = self.alive if rows is None else self.alive[rows]
        return answer_scores(logits, self.slot_cols, self.k[alive])

    def record_decided(self, orig: torch.Tensor, pos: torch.Tensor | int) -> None:
        """Note that the pass just run decided output positions ``pos`` of rows ``orig`` (original indices):
        one tensor write, no host sync. Only called when ``decided_at`` is set."""
        self.decided_at[orig, pos] = self.passes[orig] - 1  # passes already counts the pass that decided

    def drop_finished(self, keep: torch.Tensor) -> torch.Tensor:
        """Remove rows where ``keep`` is False; returns the kept row indices (to index row-shaped state)."""
        rows = keep.nonzero().squeeze(1)
        self.alive = self.alive[rows]
        self.cache.reorder(rows)
        return rows

    def results(self) -> list[SequenceResult]:
        length, passes = self.length.tolist(), self.passes.tolist()
        k = self.k.tolist()
        tokens, scores = self.out_tokens.cpu(), self.out_scores.cpu()
        decided = self.decided_at.cpu() if self.decided_at is not None else None
        return [SequenceResult(tokens[i, : length[i]].tolist(), scores[i, : length[i], : k[i]].numpy(), passes[i],
                               decided_at=None if decided is None else decided[i, : length[i]].tolist())
                for i in range(len(length))]
