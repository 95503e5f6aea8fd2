"""Error shapes and every exception handler, registered in one place.

Clients always get ``{"error": {"message", "type", "param", "code"}}``; nothing internal (stack
traces, file paths, exception reprs) crosses the boundary: unexpected exceptions are logged here
and answered with a generic 500. The error code of each response is left in ``request.state`` so
the metrics middleware can count rejections by reason without parsing bodies.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dgr2.service.schemas import ErrorResponse

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
          429: "overloaded_error", 500: "server_error", 503: "unavailable_error", 504: "timeout_error"}
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:]+){2,}")  # absolute-looking paths


def public_message(text: str) -> str:
    """Strip anything path-like from a message that may quote an internal error."""
    return _PATH.sub(lambda m: re.split(r"[\\/]", m.group(0))[-1], text)


class ServiceError(StarletteHTTPException):
    """An error with a client-facing message; subclasses fix status and code.

    It derives from Starlette's HTTPException so that FastAPI lets it through untouched even when it
    is raised while the request body is being read (the body-size limit).
    """

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, status: int | None = None) -> None:
        self.status = status or self.status
        self.code = code or self.code
        self.message, self.param = message, param
        super().__init__(status_code=self.status, detail=message, headers=headers)


class InvalidInput(ServiceError):
    status, code = 422, "invalid_value"


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"model {name!r} is not served here; available models: {', '.join(available)} "
                         "(GET /v1/models describes them)", param="model")


class TooLarge(ServiceError):
    status, code = 413, "too_large"


class QueueFull(ServiceError):
    status, code = 429, "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))})


class Unavailable(ServiceError):
    status, code = 503, "not_ready"

    def __init__(self, message: str, code: str = "not_ready") -> None:
        super().__init__(message, code=code, headers={"Retry-After": "1"})


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"

    def __init__(self, message: str = "the request's deadline passed before it was ranked") -> None:
        super().__init__(message)


class DecodeFailed(ServiceError):
    status, code = 500, "decode_failed"

    def __init__(self, message: str = "the decoder failed on this request's batch; retry") -> None:
        super().__init__(message)


class Unauthorized(ServiceError):
    status, code = 401, "invalid_token"

    def __init__(self, message: str = "missing or wrong bearer token") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


def error_body(status: int, message: str, *, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": public_message(message), "type": _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_response(request: Request, status: int, message: str, *, code: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    request.state.error_code = code
    return JSONResponse(error_body(status, message, code=code, param=param), status_code=status,
                        headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry declaring the error shape for the given statuses."""
    words = {401: "Missing or wrong bearer token", 404: "Unknown model (the message lists the served ones)",
             413: "Too many candidates or body too large",
             422: "Invalid input", 429: "Admission queue full (see Retry-After)",
             500: "Decode or reload failed (no internals)", 503: "Not ready or draining",
             504: "Deadline passed before ranking"}
    return {s: {"model": ErrorResponse, "description": words.get(s, "Error")} for s in statuses}


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the union member tried (``constrained-str``, ``ItemObject``) into ``loc``."""
    return isinstance(part, str) and (not part.isidentifier() or part[:1].isupper())


def _param(loc: tuple[Any, ...]) -> str | None:
    if loc[:1] in (("header",), ("query",)):
        return ".".join(str(p) for p in loc[1:]) or None
    parts = [str(p) for p in (loc[1:] if loc[:1] == ("body",) else loc) if not _is_union_tag(p)]
    return ".".join(parts) or None


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(request, exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors()) or [{"msg": "invalid request", "loc": (), "type": "invalid_value"}]
    # An item is ``str | ItemObject``: for a bad object, its own error says more than "not a string".
    inside_object = [e for e in errors if any(_is_union_tag(p) for p in tuple(e["loc"])[:-1])]
    first = inside_object[0] if inside_object else errors[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":  # loc holds a character offset, not a field
        reason = (first.get("ctx") or {}).get("error") or "syntax error"
        return error_response(request, 422, f"request body is not valid JSON: {reason} (at character {loc[-1]})",
                              code="json_invalid")
    param = _param(loc)
    msg = str(first.get("msg", "invalid request"))
    if loc and _is_union_tag(loc[-1]):
        msg = "expected an item id (non-empty string) or an item object {id, title, brand, category}"
    if param:
        msg = f"{param}: {msg}"
    params = {_param(tuple(e.get("loc", ()))) for e in errors}
    others = len({p for p in params if p and not (param or "").startswith(p)} - {param})
    if others:
        msg += f" (and errors in {others} more field{'s' if others > 1 else ''})"
    return error_response(request, 422, msg, code=str(first.get("type", "invalid_value")), param=param)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    message = {404: "not found", 405: "method not allowed", 413: "request body too large"}.get(status)
    code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(status, "http_error")
    return error_response(request, status, message or str(exc.detail), code=code,
                          headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Only for errors raised outside UnexpectedErrorMiddleware (in another middleware). Starlette re-raises
    # after this response, so the server logs the traceback once; only note it here.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(request, 500, "internal server error", code="internal_error")


class UnexpectedErrorMiddleware:
    """Answers an unexpected exception from a handler with the generic JSON 500, and ends it there.

    Starlette hands ``Exception`` handlers to its outermost middleware, which sends the response and
    then re-raises; uvicorn then closes the connection, and the client may see a reset instead of the
    500 it was sent. Installed innermost, so the metrics middleware still counts the 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            if started:  # half a response is out: nothing valid can follow
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            scope.setdefault("state", {})["error_code"] = "internal_error"
            body = error_body(500, "internal server error", code="internal_error")
            await JSONResponse(body, status_code=500)(scope, receive, send)


def register_exception_handlers(app: FastAPI) -> None:
    """The only place handlers are installed; order does not matter (Starlette picks by MRO)."""
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
