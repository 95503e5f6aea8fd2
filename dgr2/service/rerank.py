"""One re-rank request end to end: admit -> wait for its batch -> shape the response (-> shadow).

Kept apart from the routes so ``/v1/rerank`` and each item of ``/v1/rerank/batch`` run the very
same path, and apart from the batcher so the batcher knows nothing of the wire format.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import replace

from dgr2.model.engine import RankRequest, RankResult
from dgr2.service.ab import kendall_tau, top_overlap
from dgr2.service.batcher import Decoded
from dgr2.service.errors import DeadlineExceeded, DecodeFailed, ServiceError
from dgr2.service.limits import check_candidates
from dgr2.service.reasoning import reasoning_steps
from dgr2.service.runtime import Runtime, ServedModel
from dgr2.service.schemas import (
    Passes,
    RankedItem,
    RerankRequest,
    RerankResponse,
    Timing,
    Usage,
    Validity,
    item_id,
)


def to_rank_request(req: RerankRequest) -> RankRequest:
    """Wire items -> engine items (ids or feature dicts). The engine keeps the most recent
    ``max_history`` items (the service builds its rerankers with that setting)."""
    def ref(x):
        return x if isinstance(x, str) else x.model_dump(exclude_none=True)

    return RankRequest(history=[ref(h) for h in req.history], candidates=[ref(c) for c in req.candidates],
                       record_passes=req.return_passes)


async def rerank(rt: Runtime, served: ServedModel, req: RerankRequest, decoder: str,
                 started: float) -> RerankResponse:
    """Rank with ``served``'s checkpoint of ``decoder``, in a batch of that model's requests only.
    Raises a :class:`ServiceError` for every refusal: 413, 429, 503, 504, 500 (decode failed)."""
    rt.check_serving()
    check_candidates(req, rt.settings.max_candidates)
    deadline = started + req.deadline_ms / 1000 if req.deadline_ms else None
    batcher = served.batchers[decoder]
    job = batcher.submit(to_rank_request(req), deadline)
    try:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        decoded = await asyncio.wait_for(job.future, timeout)
    except TimeoutError:
        batcher.withdraw(job)  # still queued: free its slot now (a batch already decoding drops the result)
        raise DeadlineExceeded() from None
    # refuses a bad decode first
    response = build_response(req, decoder, decoded, served.name, started, rt.settings.max_history)
    shadow = served.router.shadow_of(decoder)
    if shadow is not None:  # the comparison needs only the shadow's order, never its passes
        rt.spawn(_shadow(rt, served, shadow, decoder, replace(job.request, record_passes=False),
                         decoded.result.order))
    return response


def build_response(req: RerankRequest, decoder: str, decoded: Decoded, model: str, started: float,
                   max_history: int) -> RerankResponse:
    r, k = decoded.result, len(req.candidates)
    if sorted(r.order) != list(range(k)):  # the engine promises a permutation; never pass on anything else
        raise DecodeFailed("the decoder returned an invalid ranking")
    if len(r.relevance) != k or not all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in r.relevance):
        raise DecodeFailed("the decoder returned invalid relevance scores")
    passes = decode_passes(r) if req.return_passes else None
    n = min(req.top_n or k, k)
    rep = r.report  # the guard's report; the wire schema is its public subset (no repair method)
    return RerankResponse(
        id=f"rr-{uuid.uuid4().hex}", model=model, model_version=decoded.engine.version, decoder=decoder,
        results=[RankedItem(index=i, item_id=item_id(req.candidates[i]), rank=pos + 1, relevance_score=score)
                 for pos, (i, score) in enumerate(zip(r.order[:n], r.relevance[:n], strict=True))],
        reasoning=r.reasoning if req.return_reasoning else None,
        reasoning_steps=reasoning_steps(r.reasoning, req, max_history) if req.return_reasoning else None,
        passes=passes,
        validity=Validity(**{name: getattr(rep, name) for name in Validity.model_fields}),
        usage=Usage(prompt_tokens=r.prompt_tokens, generated_tokens=r.generated_tokens,
                    forward_passes=r.forward_passes),
        timing=Timing(queue_ms=round(1000 * decoded.queue_s, 3), decode_ms=round(1000 * decoded.decode_s, 3),
                      total_ms=round(1000 * (time.monotonic() - started), 3)),
        unknown_items=list(r.unknown_items),
    )


def decode_passes(r: RankResult) -> Passes:
    """The request's pass record, refused (500) unless it accounts for every pass and every position."""
    if r.passes is None or len(r.passes.decided_at) != r.generated_tokens:
        raise DecodeFailed("the decoder did not record its passes")
    try:
        positions = r.passes.by_pass(r.forward_passes)
    except ValueError:
        raise DecodeFailed("the decoder's record of its passes is inconsistent") from None
    return Passes(block_size=r.passes.block_size, positions=positions, tokens=r.passes.tokens)


async def _shadow(rt: Runtime, model: ServedModel, other: str, served_by: str, request: RankRequest,
                  served: list[int]) -> None:
    """Rank the same request with the same model's other decoder, off the critical path, and record
    agreement."""
    batcher = model.batchers[other]
    if batcher.depth * 2 >= batcher.queue_limit:  # shadow traffic never crowds out real traffic
        return
    try:
        shadow = (await batcher.submit(request).future).result.order
    except ServiceError:
        return
    if sorted(shadow) != list(range(len(served))):  # only two rankings of the same candidates compare
        return
    m = rt.metrics
    m.shadow_agreement.labels(model.name, served_by, "tau").observe(kendall_tau(served, shadow))
    m.shadow_agreement.labels(model.name, served_by, "top10").observe(top_overlap(served, shadow, 10))
