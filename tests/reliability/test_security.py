"""Security: /admin needs the bearer token (compared in constant time) and does not exist without one;
refs a request names cannot reach outside the model store; every body is size-limited; no response
carries a stack trace or an internal path. (The container's non-root USER is checked with the rest of
the Dockerfile in tests/deploy/test_dockerfile.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from dgr2.service import routes as service_routes
from dgr2.service import runtime as service_runtime
from dgr2.service.app import create_app

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-admin-token"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def admin_srv(tmp_path_factory, catalog, h):
    """Admin enabled; a store with a valid checkpoint outside it, reachable only through a symlink."""
    base = tmp_path_factory.mktemp("security")
    store = h.make_store(base / "store", catalog)
    outside = base / "outside-ckpt"
    shutil.copytree(store.resolve(h.MODEL, "ar"), outside)  # a perfectly valid checkpoint ...
    (store.root / h.MODEL / "evil-link").symlink_to(outside, target_is_directory=True)  # ... linked in
    with h.running(h.settings_for(store, admin_token=TOKEN, max_body_bytes=16 * 1024)) as srv:
        srv.outside = outside
        yield srv


def _reload(srv, headers: dict | None = None, **body) -> httpx.Response:
    return httpx.post(f"{srv.url}/admin/reload", headers=headers or {}, json=body or None, timeout=60)


def _versions(url: str) -> list[str]:
    return sorted(httpx.get(f"{url}/readyz", timeout=5).json()["versions"].values())


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer  wrong", "Bearer wrong-token", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN} extra", TOKEN, f"Basic {TOKEN}", f"Token {TOKEN}", "Bearer t\u00f6ken".encode("latin-1"),
    f"Bearer{TOKEN}", f"Bearer\t{TOKEN}x",
])
def test_admin_refuses_a_missing_or_wrong_token(admin_srv, h, authorization):
    headers = {} if authorization is None else {"authorization": authorization}
    r = _reload(admin_srv, headers)
    h.assert_error(r, 401, "invalid_token")
    assert r.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in r.text


def test_admin_accepts_the_token_and_compares_it_in_constant_time(admin_srv, h, monkeypatch):
    calls = []
    real = service_routes.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service_routes.hmac, "compare_digest", spy)
    before = _versions(admin_srv.url)
    for scheme in ("Bearer", "bearer"):
        r = _reload(admin_srv, {"authorization": f"{scheme} {TOKEN}"})
        assert r.status_code == 200, r.text
    assert _reload(admin_srv, {"authorization": "Bearer nope"}).status_code == 401
    assert calls == [(TOKEN.encode(), TOKEN.encode())] * 2 + [(b"nope", TOKEN.encode())]
    assert _versions(admin_srv.url) == before
    with admin_srv.client() as c:
        h.assert_error(c.get("/admin/reload"), 405)
        h.assert_error(c.post("/admin/other", headers={"authorization": f"Bearer {TOKEN}"}), 404)


@pytest.mark.parametrize("token", [None, ""])
def test_admin_does_not_exist_without_a_token(shared_store, h, token):
    app = create_app(h.settings_for(shared_store, admin_token=token))  # nothing loads until it starts
    assert not [p for p in app.openapi()["paths"] if p.startswith("/admin")]
    assert "/v1/rerank" in app.openapi()["paths"]
    with TestClient(app) as c:  # runs the lifespan: the models load, /admin still does not exist
        r = c.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
        h.assert_error(httpx.Response(r.status_code, headers=r.headers, content=r.content), 404, "not_found")


@pytest.mark.parametrize("ref", [
    "..", "../..", "../outside-ckpt", "../../../etc", "/etc/passwd", "ar/../../x", "init-tiny-s0-ar/../..",
    "%2e%2e", "%2e%2e%2fetc", "..%2f..%2fetc", "a\x00b", "C:\\Windows", "\\\\server\\share", ".hidden", "~root",
    "evil-link", "x" * 300, " ar", "ar\n",
])
def test_reload_refs_cannot_escape_the_store(admin_srv, h, ref):
    before = _versions(admin_srv.url)
    auth = {"authorization": f"Bearer {TOKEN}"}
    for field in ("ar_ref", "diffusion_ref"):
        r = _reload(admin_srv, auth, **{field: ref})
        err = h.assert_error(r, 422)
        assert err["param"] == field, err
        assert str(admin_srv.outside) not in r.text and str(admin_srv.rt.store.root) not in r.text
    assert _versions(admin_srv.url) == before  # nothing was loaded


@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/rerank/batch", "/admin/reload"])
def test_every_body_is_size_limited(admin_srv, h, path):
    big = json.dumps({"candidates": ["S0001"], "history": ["x" * 1000] * 20}).encode()
    assert len(big) > admin_srv.rt.settings.max_body_bytes
    headers = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    with admin_srv.client() as c:
        h.assert_error(c.post(path, content=big, headers=headers), 413, "body_too_large")
        chunks = (big[i:i + 4096] for i in range(0, len(big), 4096))  # no Content-Length
        h.assert_error(c.post(path, content=chunks, headers=headers), 413, "body_too_large")
        assert c.get("/readyz").status_code == 200


def test_no_stack_trace_or_path_in_any_response(admin_srv, h, monkeypatch):
    """Force the error paths that hold internal details and read every public endpoint."""
    secret = "/opt/secret/service/internals.py"
    root = str(admin_srv.rt.store.root)

    def boom(*a, **k):
        raise KeyError(f"{secret} line 7")

    with admin_srv.client() as c:
        monkeypatch.setattr(admin_srv.rt.model(h.MODEL).router, "choose", boom)  # an unexpected exception in a handler
        r = c.post("/v1/rerank", json={"candidates": ["S0001"]})
        assert h.assert_error(r, 500, "internal_error")["message"] == "internal server error"
        r = c.post("/v1/rerank/batch", json={"requests": [{"candidates": ["S0001"]}]})
        h.assert_error(r, 500, "internal_error")
        monkeypatch.undo()
        monkeypatch.setattr(service_runtime, "warm_up", boom)  # a reload that fails outside the checkpoint
        before = _versions(admin_srv.url)
        r = _reload(admin_srv, {"authorization": f"Bearer {TOKEN}"})
        err = h.assert_error(r, 500, "reload_failed")
        assert err["message"].endswith("KeyError (details in the server log)") and "secret" not in r.text
        assert _versions(admin_srv.url) == before
        monkeypatch.undo()
        for method, path, status in [("GET", "/nope", 404), ("DELETE", "/v1/rerank", 405), ("GET", "/v1/rerank", 405),
                                     ("POST", "/healthz", 405), ("GET", "/..%2f..%2fetc%2fpasswd", 404),
                                     ("GET", "/admin/../etc", 404)]:
            h.assert_error(c.request(method, path), status)
        for path in ("/openapi.json", "/v1/models", "/metrics", "/healthz", "/readyz", "/docs"):
            r = c.get(path)
            assert r.status_code == 200
            for leak in ("Traceback", root, "/tmp/", "site-packages", str(ROOT)):
                assert leak not in r.text, (path, leak)


def test_a_failed_warm_up_stops_the_server_and_shows_no_internals(shared_store, h, monkeypatch):
    def failing(models):
        raise RuntimeError("CUDA out of memory in /opt/secret/kernels/attention.py:42")

    monkeypatch.setattr(service_runtime, "warm_up", failing)
    with h.running(h.settings_for(shared_store), ready=False) as srv:
        h.wait_for(lambda: not srv.thread.is_alive(), 60, "the server to stop after the failed warm-up")
        # what a client could have read meanwhile is the public reason; the server log has the rest
        assert srv.rt.warm_error == f"warm-up of {h.MODEL} failed: RuntimeError (details in the server log)"
        planted = "RuntimeError: CUDA out of memory in /opt/secret/kernels/attention.py:42"
        assert srv.server.fatal_error.endswith(planted)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/readyz", timeout=5)

