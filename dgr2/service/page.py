"""The comparison page: ``GET /`` and its two static files, shipped inside the package (no build step).

The page calls the public API only (``/v1/example-request``, ``/v1/rerank``, ``/v1/items``,
``/v1/models``). Its Content-Security-Policy allows scripts, styles and requests from this origin
alone, so even a string that slipped into the DOM as markup could not run (the script writes every
value with ``textContent``).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

page_router = APIRouter(include_in_schema=False)

STATIC = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


@cache
def _read(name: str) -> bytes:
    return files("dgr2.service").joinpath("static", name).read_bytes()


@page_router.get("/")
async def index() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@page_router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:  # a fixed list: nothing else in the package is reachable
        raise StarletteHTTPException(404)
    return Response(_read(name), media_type=STATIC[name], headers=HEADERS)
