"""HTTP routes. Thin on purpose: parse, pick the decoder, hand over to :mod:`service.rerank`.

Everything stateful comes from ``request.app.state.runtime``; every error a route can answer is
declared in the OpenAPI schema with the one error shape.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from dgr2.service.body import StrictJSONRoute
from dgr2.service.errors import ServiceError, Unauthorized, error_body, error_responses
from dgr2.service.limits import check_batch
from dgr2.service.rerank import rerank
from dgr2.service.runtime import Runtime
from dgr2.service.schemas import (
    BatchItem,
    Decoder,
    DecoderInfo,
    ErrorBody,
    ModelsResponse,
    ReloadRequest,
    ReloadResponse,
    RerankBatchRequest,
    RerankBatchResponse,
    RerankRequest,
    RerankResponse,
    Status,
)

router = APIRouter(route_class=StrictJSONRoute)  # bodies are strict JSON: see service.body
admin_router = APIRouter(prefix="/admin", tags=["admin"], route_class=StrictJSONRoute)
XDecoder = Annotated[Decoder | None, Header(description="override the A/B decision (the body field wins)")]
RERANK_ERRORS = error_responses(413, 422, 429, 500, 503, 504)


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


@router.post("/v1/rerank", response_model=RerankResponse, responses=RERANK_ERRORS, tags=["rerank"],
             summary="Rank candidates for a user's history")
async def rerank_one(body: RerankRequest, request: Request, x_decoder: XDecoder = None) -> Response:
    started = time.monotonic()
    rt = runtime(request)
    decoder = rt.router.choose(body.user_id, body.decoder or x_decoder)
    request.state.decoder = decoder
    resp = await rerank(rt, body, decoder, started)
    return JSONResponse(resp.model_dump(mode="json", exclude_none=True),
                        headers={"x-decoder": decoder, "x-model-version": resp.model_version})


@router.post("/v1/rerank/batch", response_model=RerankBatchResponse, responses=RERANK_ERRORS, tags=["rerank"],
             summary="Several re-rank requests in one call; each item succeeds or fails on its own")
async def rerank_many(body: RerankBatchRequest, request: Request, x_decoder: XDecoder = None) -> Response:
    rt = runtime(request)
    rt.check_serving()
    check_batch(body, rt.settings.max_batch_requests, rt.settings.max_candidates)

    async def one(req: RerankRequest) -> BatchItem:
        started = time.monotonic()
        decoder = rt.router.choose(req.user_id, req.decoder or x_decoder)
        try:
            resp = await rerank(rt, req, decoder, started)
        except ServiceError as e:
            rt.metrics.observe_request(decoder, e.status, time.monotonic() - started,
                                       e.code if e.status == 503 else None)
            error = ErrorBody(**error_body(e.status, e.message, code=e.code, param=e.param)["error"])
            return BatchItem(status=e.status, error=error)
        rt.metrics.observe_request(decoder, 200, time.monotonic() - started)
        return BatchItem(status=200, response=resp)

    items = await asyncio.gather(*(one(r) for r in body.requests))
    served = [i.response for i in items if i.response is not None]
    content = {"responses": [{"status": i.status, "response": i.response.model_dump(mode="json", exclude_none=True)}
                             if i.response else {"status": i.status, "error": i.error.model_dump(mode="json")}
                             for i in items]}
    headers = {"x-decoder": ",".join(sorted({r.decoder for r in served})),
               "x-model-version": ",".join(sorted({r.model_version for r in served}))}
    return JSONResponse(content, headers={k: v for k, v in headers.items() if v})


@router.get("/v1/models", response_model=ModelsResponse, tags=["models"], summary="What each decoder serves")
async def models(request: Request) -> ModelsResponse:
    rt = runtime(request)
    current = rt.models.current
    engines = current.engines.values() if current else []
    return ModelsResponse(
        model=rt.settings.model, ready=rt.ready and not rt.draining, ab_split=rt.router.split,
        shadow_rate=rt.router.shadow_rate,
        decoders=[DecoderInfo(**e.info()) for e in engines])


@router.get("/healthz", response_model=Status, tags=["ops"], summary="The process is alive")
async def healthz() -> Status:
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses=error_responses(503), tags=["ops"],
            summary="Models loaded, verified and warmed; not draining")
async def readyz(request: Request) -> Status:
    rt = runtime(request)
    rt.check_serving()
    current = rt.models.current
    return Status(status="ready", versions=current.versions() if current else {})


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
                   responses=error_responses(401, 422, 500, 503),
                   summary="Load, verify and warm checkpoints, then swap them in atomically")
async def reload(request: Request, body: ReloadRequest | None = None) -> ReloadResponse:
    rt = runtime(request)
    refs = {"ar": body.ar_ref, "diffusion": body.diffusion_ref} if body else {}
    previous, current, seconds = await rt.reload(refs)
    return ReloadResponse(model=rt.settings.model, previous=previous, current=current,
                          reload_ms=round(1000 * seconds, 3))
