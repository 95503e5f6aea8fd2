"""HTTP routes. Thin on purpose: parse, pick the model and the decoder, hand over to :mod:`service.rerank`.

Everything stateful comes from ``request.app.state.runtime``; every error a route can answer is
declared in the OpenAPI schema with the one error shape.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from dgr2.model.config import DECODERS
from dgr2.model.tokenizer import MAX_HISTORY, MAX_SLOTS
from dgr2.model_store import CheckpointError
from dgr2.service.body import StrictJSONRoute
from dgr2.service.errors import InvalidInput, ServiceError, Unauthorized, Unavailable, error_body, error_responses
from dgr2.service.limits import check_batch
from dgr2.service.models import Engine
from dgr2.service.rerank import rerank
from dgr2.service.runtime import Runtime, ServedModel
from dgr2.service.schemas import (
    BatchItem,
    Decoder,
    DecoderInfo,
    ErrorBody,
    ExampleRequest,
    ItemInfo,
    ItemsRequest,
    ItemsResponse,
    ModelInfo,
    ModelsResponse,
    ReloadRequest,
    ReloadResponse,
    RerankBatchRequest,
    RerankBatchResponse,
    RerankRequest,
    RerankResponse,
    Status,
)

log = logging.getLogger(__name__)
router = APIRouter(route_class=StrictJSONRoute)  # bodies are strict JSON: see service.body
admin_router = APIRouter(prefix="/admin", tags=["admin"], route_class=StrictJSONRoute)
XDecoder = Annotated[Decoder | None, Header(description="override the A/B decision (the body field wins)")]
RERANK_ERRORS = error_responses(404, 413, 422, 429, 500, 503, 504)
ModelQuery = Annotated[str | None, Query(min_length=1, max_length=256,
                                         description="a model GET /v1/models lists (default: the default model)")]


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def response_json(resp: RerankResponse) -> dict:
    """A response as sent: the optional parts not asked for (reasoning, passes) are left out; inside the
    parts sent every documented field is there, null included (a strength the model did not write)."""
    return resp.model_dump(mode="json", exclude={name for name, value in resp if value is None})


@router.post("/v1/rerank", response_model=RerankResponse, responses=RERANK_ERRORS, tags=["rerank"],
             summary="Rank candidates for a user's history")
async def rerank_one(body: RerankRequest, request: Request, x_decoder: XDecoder = None) -> Response:
    started = time.monotonic()
    rt = runtime(request)
    served = rt.model(body.model)
    request.state.model = served.name
    decoder = served.router.choose(body.user_id, body.decoder or x_decoder)
    request.state.decoder = decoder
    resp = await rerank(rt, served, body, decoder, started)
    return JSONResponse(response_json(resp), headers={"x-decoder": decoder, "x-model-version": resp.model_version})


@router.post("/v1/rerank/batch", response_model=RerankBatchResponse, responses=RERANK_ERRORS, tags=["rerank"],
             summary="Several re-rank requests in one call; each item succeeds or fails on its own")
async def rerank_many(body: RerankBatchRequest, request: Request, x_decoder: XDecoder = None) -> Response:
    rt = runtime(request)
    rt.check_serving()
    check_batch(body, rt.settings.max_batch_requests, rt.settings.max_candidates)

    async def one(i: int, req: RerankRequest) -> BatchItem:
        started = time.monotonic()
        model = decoder = None
        try:
            chosen = rt.model(req.model)
            model = chosen.name
            decoder = chosen.router.choose(req.user_id, req.decoder or x_decoder)
            resp = await rerank(rt, chosen, req, decoder, started)
        except ServiceError as e:
            rt.metrics.observe_request(model, decoder, e.status, time.monotonic() - started,
                                       e.code if e.status == 503 else None)
            param = f"requests.{i}.{e.param}" if e.param == "model" else e.param
            error = ErrorBody(**error_body(e.status, e.message, code=e.code, param=param)["error"])
            return BatchItem(status=e.status, error=error)
        rt.metrics.observe_request(model, decoder, 200, time.monotonic() - started)
        return BatchItem(status=200, response=resp)

    items = await asyncio.gather(*(one(i, r) for i, r in enumerate(body.requests)))
    served = [i.response for i in items if i.response is not None]
    content = {"responses": [{"status": i.status, "response": response_json(i.response)}
                             if i.response else {"status": i.status, "error": i.error.model_dump(mode="json")}
                             for i in items]}
    headers = {"x-decoder": ",".join(sorted({r.decoder for r in served})),
               "x-model-version": ",".join(sorted({r.model_version for r in served}))}
    return JSONResponse(content, headers={k: v for k, v in headers.items() if v})


@router.get("/v1/models", response_model=ModelsResponse, tags=["models"],
            summary="Every model served: what each decoder serves, and the store's versions and aliases")
async def models(request: Request) -> ModelsResponse:
    rt = runtime(request)
    listed = [model_info(rt, served) for served in rt.served.values()]
    default = next(m for m in listed if m.default)
    return ModelsResponse(
        model=default.model, ready=rt.ready and not rt.draining, ab_split=default.ab_split,
        shadow_rate=rt.settings.shadow_rate, decoders=default.decoders, models=listed)


def model_info(rt: Runtime, served: ServedModel) -> ModelInfo:
    current = served.holder.current
    engines = current.engines.values() if current else []
    try:  # read now, not at start-up: what a reload could name is what the store holds now
        versions, aliases = rt.store.versions(served.name), rt.store.aliases(served.name)
    except (CheckpointError, OSError) as e:
        log.warning("cannot list %s in the model store: %s", served.name, e)
        versions = aliases = None
    return ModelInfo(model=served.name, default=served.name == rt.default_model, versions=versions,
                     aliases=aliases, decoders=[DecoderInfo(**e.info()) for e in engines],
                     ab_split=served.router.split)


EXAMPLE_HISTORY = 20  # history items in an example request unless asked otherwise


def engines(rt: Runtime, model: str | None) -> list[Engine]:
    """The model's serving engines, AR first (its catalog draws the examples)."""
    current = rt.model(model).holder.current
    if current is None:
        raise Unavailable("models are loading", code="not_ready")
    return [current.engines[d] for d in DECODERS if d in current.engines]


@router.get("/v1/example-request", response_model=ExampleRequest, responses=error_responses(404, 422, 503),
            tags=["rerank"], summary="A random re-rank request drawn from a served model's catalog")
async def example_request(
        request: Request,
        model: ModelQuery = None,
        candidates: Annotated[int | None, Query(ge=1, le=MAX_SLOTS, description="default: max_candidates")] = None,
        history: Annotated[int | None, Query(ge=0, le=MAX_HISTORY, description="default: 20")] = None,
        seed: Annotated[int | None, Query(ge=0, le=2**32 - 1, description="same seed, same request")] = None,
) -> ExampleRequest:
    rt = runtime(request)
    s = rt.settings
    n_cand = s.max_candidates if candidates is None else candidates
    n_hist = min(EXAMPLE_HISTORY, s.max_history) if history is None else history
    if n_cand > s.max_candidates:
        raise InvalidInput(f"candidates: at most {s.max_candidates} (max_candidates)", param="candidates")
    if n_hist > s.max_history:
        raise InvalidInput(f"history: at most {s.max_history} (max_history)", param="history")
    served = rt.model(model)
    ids = engines(rt, served.name)[0].catalog_ids
    if n_hist + n_cand > len(ids):
        raise InvalidInput(f"the catalog has {len(ids)} items, fewer than history + candidates", param="candidates")
    drawn = random.Random(seed).sample(ids, n_hist + n_cand)  # distinct: no item is both history and candidate
    return ExampleRequest(model=served.name, history=drawn[:n_hist], candidates=drawn[n_hist:])


@router.post("/v1/items", response_model=ItemsResponse, responses=error_responses(404, 413, 422, 503),
             tags=["rerank"], summary="What a served model's catalog says of items: title, brand, category")
async def items(body: ItemsRequest, request: Request) -> ItemsResponse:
    serving = engines(runtime(request), body.model)
    out = []
    for item_id in body.ids:
        item = next((it for e in serving if (it := e.describe(item_id)) is not None), None)
        out.append(ItemInfo(id=item_id, known=item is not None, title=item.title if item else None,
                            brand=item.brand if item else None, category=item.category if item else None))
    return ItemsResponse(items=out)


@router.get("/healthz", response_model=Status, response_model_exclude_none=True, tags=["ops"],
            summary="The process is alive")
async def healthz() -> Status:
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses=error_responses(503), tags=["ops"],
            summary="Models loaded, verified and warmed; not draining")
async def readyz(request: Request) -> Status:
    rt = runtime(request)
    rt.check_serving()
    current = rt.models.current
    return Status(status="ready", versions=current.versions() if current else {},
                  models={s.name: s.holder.current.versions() for s in rt.served.values() if s.holder.current})


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(runtime(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer token check in constant time; /admin does not exist at all without a token."""
    token = runtime(request).settings.admin_token
    if token is None:
        raise StarletteHTTPException(404)
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.get_secret_value().encode()):
        raise Unauthorized()


@admin_router.post("/reload", response_model=ReloadResponse, dependencies=[Depends(require_admin)],
                   responses=error_responses(401, 404, 422, 500, 503),
                   summary="Load, verify and warm one model's checkpoints, then swap them in atomically")
async def reload(request: Request, body: ReloadRequest | None = None) -> ReloadResponse:
    rt = runtime(request)
    refs = {"ar": body.ar_ref, "diffusion": body.diffusion_ref} if body else {}
    model, previous, current, seconds = await rt.reload(body.model if body else None, refs)
    return ReloadResponse(model=model, previous=previous, current=current, reload_ms=round(1000 * seconds, 3))
