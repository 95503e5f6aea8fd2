"""Size limits that answer 413: the request body, candidates per request, requests per batch.

The body limit wraps ``receive`` rather than answering from the middleware, so the error is raised
inside the endpoint's body read and goes through the one set of exception handlers like any other.
A declared ``Content-Length`` over the limit is refused before a byte of the body is read.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dgr2.service.errors import TooLarge
from dgr2.service.schemas import RerankBatchRequest, RerankRequest


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.limit = app, max_body_bytes

    def _too_large(self) -> TooLarge:
        return TooLarge(f"request body is larger than {self.limit} bytes", code="body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        over = declared.isdigit() and int(declared) > self.limit
        received = 0

        async def limited() -> Message:
            nonlocal received
            if over:
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)


def check_candidates(req: RerankRequest, max_candidates: int, param: str = "candidates") -> None:
    if len(req.candidates) > max_candidates:
        raise TooLarge(f"{len(req.candidates)} candidates; at most {max_candidates} per request",
                       code="too_many_candidates", param=param)


def check_batch(batch: RerankBatchRequest, max_requests: int, max_candidates: int) -> None:
    if len(batch.requests) > max_requests:
        raise TooLarge(f"{len(batch.requests)} requests; at most {max_requests} per batch",
                       code="too_many_requests", param="requests")
    for i, req in enumerate(batch.requests):
        check_candidates(req, max_candidates, f"requests.{i}.candidates")
