"""The re-ranking engine: prompt -> decoder (AR or block diffusion) -> guard -> ranking.

This is the one entry point the service, the evaluation and the benchmarks call; it knows nothing
of HTTP or training. A result's ``order`` is always a permutation of the request's candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from dgr2.model.ar_decoder import decode_ar
from dgr2.model.catalog import Catalog
from dgr2.model.config import DECODERS, DecoderKind
from dgr2.model.decoding import DecodeConfig, completion_budget
from dgr2.model.diffusion_decoder import decode_diffusion
from dgr2.model.guard import GuardReport, guard
from dgr2.model.prompt import AnswerParse, ItemRef, check_catalog, parse_answer, render_prompt
from dgr2.model.tokenizer import MAX_HISTORY, Vocab
from dgr2.model.transformer import Transformer

DECODE_FUNCTIONS: dict[DecoderKind, Callable[..., list]] = {"ar": decode_ar, "diffusion": decode_diffusion}


@dataclass
class RankRequest:
    history: Sequence[ItemRef]
    candidates: Sequence[ItemRef]
    record_passes: bool = False  # fill RankResult.passes (a batch records when any of its requests asks)


@dataclass
class DecodePasses:
    """What each forward pass of one request decided, for replaying a decode."""

    block_size: int  # positions a pass may decide together: the diffusion block, 1 for AR
    decided_at: list[int]  # per output position, the pass that decided it (0 = the prefill)
    tokens: list[str]  # the decoded continuation, one token per output position

    def by_pass(self, forward_passes: int) -> list[list[int]]:
        """``out[p]``: the output positions pass ``p`` decided, ascending; ``ValueError`` when a position
        names a pass outside ``range(forward_passes)``."""
        out: list[list[int]] = [[] for _ in range(forward_passes)]
        for pos, p in enumerate(self.decided_at):
            if not 0 <= p < forward_passes:
                raise ValueError(f"position {pos} decided at pass {p}, outside 0..{forward_passes - 1}")
            out[p].append(pos)
        return out


@dataclass
class RankResult:
    order: list[int]  # candidate indices (positions in the request), best first
    relevance: list[float]  # aligned with ``order``, non-increasing: what the service sends
    report: GuardReport
    reasoning: str
    prompt_tokens: int
    generated_tokens: int
    forward_passes: int
    unknown_items: list[str] = field(default_factory=list)
    # per candidate, in request order: the model's expected DCG gain before the monotone fit
    # (:func:`expected_gains`); for evaluation and diagnostics, never sent to clients
    expected_gain: list[float] = field(default_factory=list)
    passes: DecodePasses | None = None  # only for a request with record_passes
    # the answer's slots as decoded, before the guard (duplicates kept, out-of-set dropped): what the
    # model wrote on its own, for evaluation; equal to ``order`` when the answer was valid
    decoded_slots: list[int] = field(default_factory=list)


def expected_gains(parse: AnswerParse, position_logprobs: np.ndarray | None) -> np.ndarray:
    """Per candidate (request order), its expected DCG gain under the model: sum_r P(rank r = slot) / log2(r + 2).

    ``P`` is the K x K (rank position x slot) matrix of the answer positions' probabilities, as the
    decoder recorded them. Ranks the decoder never wrote (a short or missing answer) count as uniform
    over the slots. Values lie in [0, 1] but need not decrease along the decoded order: this is the
    raw score, which :func:`relevance_scores` makes monotone.
    """
    K = parse.num_slots
    P = np.full((K, K), 1.0 / K)
    if parse.start is not None and position_logprobs is not None:
        rows = np.asarray(position_logprobs, dtype=np.float64)[parse.start + 1: parse.start + 1 + K, :K]
        P[: len(rows)] = np.exp(rows)
    gains = 1.0 / np.log2(np.arange(K) + 2.0)
    return np.nan_to_num(P.T @ gains, nan=0.0).clip(0.0, 1.0)


def monotone_decreasing(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The non-increasing sequence closest to ``values`` in squared error (antitonic regression).

    Pool-adjacent-violators: walk the sequence, and whenever a block's mean exceeds the mean of the
    block before it, merge the two into their (length-weighted) mean. A sequence that is already
    non-increasing comes back unchanged; every output value is the mean of a run of inputs, so the
    output stays within the inputs' range.
    """
    means: list[float] = []
    sizes: list[int] = []
    for v in np.asarray(values, dtype=np.float64).ravel():
        means.append(float(v))
        sizes.append(1)
        while len(means) > 1 and means[-2] < means[-1]:
            m, n = means.pop(), sizes.pop()
            means[-1] = (means[-1] * sizes[-1] + m * n) / (sizes[-1] + n)
            sizes[-1] += n
    return np.repeat(np.asarray(means, dtype=np.float64), sizes)


def relevance_scores(gains: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """The served ``relevance_score`` of each position of ``order`` (best first).

    The candidates' expected gains (:func:`expected_gains`) read in the guarded order, then made
    non-increasing by :func:`monotone_decreasing`: where the decoded order agrees with the model's
    marginals the expected gains pass through unchanged; where a candidate below has a higher
    expected gain than one above it, the run in between shares its mean gain. In [0, 1], never rising
    down the ranking, and still the model's confidence: a sure decode scores near 1 at rank 1, an
    unsure one far lower.
    """
    return monotone_decreasing(np.asarray(gains, dtype=np.float64)[list(order)]).clip(0.0, 1.0)


class Reranker:
    def __init__(self, model: Transformer, vocab: Vocab, catalog: Catalog, decoder: str = "ar",
                 decode: DecodeConfig | None = None, max_history: int = MAX_HISTORY) -> None:
        """Each request's decode budget is capped at what a full completion for its own K needs, from
        the trace length the model was trained with (``model.config.trace_len``)."""
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
        check_catalog(vocab, catalog)  # fail at load, not at the first request
        self.model, self.vocab, self.catalog, self.decoder = model, vocab, catalog, decoder
        self.decode = decode or DecodeConfig.for_model(model.config)
        self.max_history = max_history

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        prompts = [render_prompt(self.vocab, self.catalog, r.history, r.candidates, self.max_history)
                   for r in requests]
        # each request's own budget, so that a request decodes alike whatever it is batched with
        budgets = [min(self.decode.max_new_tokens, completion_budget(self.model.config.trace_len, p.num_slots))
                   for p in prompts]
        cfg = replace(self.decode, max_new_tokens=max(budgets))
        outs = DECODE_FUNCTIONS[self.decoder](self.model, self.vocab, [p.ids for p in prompts],
                                              [p.num_slots for p in prompts], cfg,
                                              record_passes=any(r.record_passes for r in requests), budgets=budgets)
        block = cfg.block_size if self.decoder == "diffusion" else 1
        results = []
        for request, prompt, out in zip(requests, prompts, outs, strict=True):
            parse = parse_answer(self.vocab, out.tokens, prompt.num_slots)
            order, report = guard(parse, out.slot_logprobs)
            gains = expected_gains(parse, out.slot_logprobs)
            results.append(RankResult(
                # rounding is monotone, so the rounded scores stay non-increasing
                order=order, relevance=[round(float(s), 6) for s in relevance_scores(gains, order)],
                report=report, reasoning=self.reasoning_text(out.tokens), prompt_tokens=len(prompt.ids),
                generated_tokens=out.generated_tokens, forward_passes=out.forward_passes,
                unknown_items=prompt.unknown_items, expected_gain=[float(g) for g in gains],
                passes=DecodePasses(block, out.decided_at, [self.vocab.token(t) for t in out.tokens])
                if request.record_passes and out.decided_at is not None else None,
                decoded_slots=list(parse.slots),
            ))
        return results

    def reasoning_text(self, tokens: Sequence[int]) -> str:
        """The decoded trace: everything before ``</think>`` (or before the answer when it is missing)."""
        end = len(tokens)
        for stop in (self.vocab.end_think, self.vocab.answer):
            if stop in tokens:
                end = min(end, list(tokens).index(stop))
        return self.vocab.decode(tokens[:end])
