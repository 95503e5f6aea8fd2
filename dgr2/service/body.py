"""Request bodies are parsed as strict JSON (RFC 8259), so no byte sequence can reach a 400 or a 500.

FastAPI answers a body that ``json.loads`` rejects with anything but ``JSONDecodeError`` (bytes that
are not UTF-8, nesting deeper than the interpreter's recursion limit, an integer of more than 4300
digits) with an undocumented 400, and it hands on what plain ``json`` accepts beyond the standard:
``NaN``/``Infinity`` and lone UTF-16 surrogates (``"\\ud800"``), a string that cannot be encoded
back to UTF-8 and so fails the response (an error message or ranking that echoes it) with a 500.
Every such body is refused here as ``JSONDecodeError``, which FastAPI turns into the 422
``json_invalid`` error. Bodies nest at most :data:`MAX_DEPTH` levels; a request needs four.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

MAX_DEPTH = 32


def _invalid(reason: str, pos: int = 0) -> json.JSONDecodeError:
    return json.JSONDecodeError(reason, "", pos)


def _no_constant(name: str) -> Any:
    raise _invalid(f"{name} is not a JSON value")


def parse_json(raw: bytes) -> Any:
    """``raw`` -> a JSON value, or :class:`json.JSONDecodeError` with a reason a client can act on."""
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is tolerated, as RFC 8259 allows
    except UnicodeDecodeError as e:
        raise _invalid(f"the body is not UTF-8 (byte {e.start})", e.start) from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise _invalid(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        raise _invalid("a number has too many digits") from None
    _check(value)
    return value


def _check(value: Any) -> None:
    """Depth and string checks, iteratively (a recursive walk would fail on the depth it checks)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            _utf8(v)
        elif isinstance(v, dict | list):
            if depth > MAX_DEPTH:
                raise _invalid(f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(v, dict):
                for k, item in v.items():
                    _utf8(k)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)


def _utf8(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _invalid(f"a string holds a lone surrogate (\\u{ord(s[e.start]):04x}), which is not Unicode") from None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An ``APIRoute`` whose endpoint reads its body with :func:`parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
