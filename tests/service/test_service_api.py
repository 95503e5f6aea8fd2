"""The public API against a real server: both decoders, A/B, overrides, validation, limits, batch, OpenAPI."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dgr2.service.ab import ABRouter

pytestmark = pytest.mark.timeout(120)  # every wait inside is bounded well below this


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_rerank_each_decoder(client, server, h, decoder):
    body = h.rerank_body(decoder=decoder, user_id="U00001")
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    version = server.rt.models.engine(decoder).version
    assert r.headers["x-decoder"] == data["decoder"] == decoder
    assert r.headers["x-model-version"] == data["model_version"] == version
    assert data["model"] == h.MODEL and data["id"]
    h.assert_permutation(data, h.CANDIDATES)
    assert set(data["validity"]) == {"valid_as_decoded", "repaired", "duplicates", "missing", "out_of_set",
                                     "malformed"}
    assert data["usage"]["prompt_tokens"] > 0 and data["usage"]["generated_tokens"] > 0
    assert data["usage"]["forward_passes"] > 0
    assert data["timing"]["total_ms"] >= data["timing"]["decode_ms"] > 0
    assert "reasoning" not in data and data["unknown_items"] == []


def test_top_n_reasoning_and_unknown_items(client, h):
    candidates = ["S0003", {"id": "NEW-1", "title": "a new serum", "brand": "brand2", "category": "category1"},
                  "NOT-IN-CATALOG", "S0004", "S0005"]
    body = {"history": ["S0001", "GONE-9"], "candidates": candidates, "top_n": 3, "return_reasoning": True}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    h.assert_permutation(data, candidates, top_n=3)
    assert isinstance(data["reasoning"], str)
    assert set(data["unknown_items"]) == {"NEW-1", "NOT-IN-CATALOG", "GONE-9"}
    r = client.post("/v1/rerank", json={"candidates": ["S0001", "S0002"], "top_n": 50})
    h.assert_permutation(r.json(), ["S0001", "S0002"])


def test_long_history_keeps_the_most_recent(client, server):
    long = [f"S{i % 60:04d}" for i in range(300)]
    keep = server.rt.settings.max_history
    a = client.post("/v1/rerank", json={"history": long, "candidates": ["S0001", "S0002"], "decoder": "ar"})
    b = client.post("/v1/rerank", json={"history": long[-keep:], "candidates": ["S0001", "S0002"], "decoder": "ar"})
    assert a.status_code == b.status_code == 200
    assert a.json()["usage"]["prompt_tokens"] == b.json()["usage"]["prompt_tokens"]
    assert a.json()["results"] == b.json()["results"]


def test_sticky_ab_assignment(server):
    settings = server.rt.settings
    expected = ABRouter(settings.ab_split, settings.ab_salt)
    users = [f"user-{u}" for u in range(16)]

    def decoder_of(user):
        with server.client() as c:
            body = {"candidates": ["S0001", "S0002"], **({"user_id": user} if user else {})}
            return c.post("/v1/rerank", json=body).headers["x-decoder"]

    with ThreadPoolExecutor(8) as pool:  # concurrent, so the requests share batches and the test is quick
        first = list(pool.map(decoder_of, users))
        second = list(pool.map(decoder_of, users))
        anonymous = set(pool.map(decoder_of, [None] * 24))
    assert first == second == [expected.choose(u) for u in users]  # sticky: salt + user_id decide alone
    assert set(first) == {"ar", "diffusion"}  # a 50/50 split over 16 users reaches both
    assert anonymous == {"ar", "diffusion"}  # random draw: all 24 on one side has probability 2^-23


def test_overrides_field_and_header(client, server):
    settings = server.rt.settings
    router = ABRouter(settings.ab_split, settings.ab_salt)
    user = next(f"u{i}" for i in range(100) if router.choose(f"u{i}") == "ar")
    base = {"user_id": user, "candidates": ["S0001", "S0002", "S0003"]}
    assert client.post("/v1/rerank", json=base).headers["x-decoder"] == "ar"
    assert client.post("/v1/rerank", json={**base, "decoder": "diffusion"}).headers["x-decoder"] == "diffusion"
    r = client.post("/v1/rerank", json=base, headers={"x-decoder": "diffusion"})
    assert r.headers["x-decoder"] == "diffusion" and r.json()["decoder"] == "diffusion"
    r = client.post("/v1/rerank", json={**base, "decoder": "ar"}, headers={"x-decoder": "diffusion"})
    assert r.headers["x-decoder"] == "ar"  # the body field wins over the header


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"candidates": []}, "too_short", "candidates"),
    ({"history": []}, "missing", "candidates"),
    ({"candidates": ["S0001", "S0002", "S0001"]}, "duplicate_candidates", "candidates"),
    ({"candidates": ["S0001", {"id": "S0001", "brand": "x"}]}, "duplicate_candidates", "candidates"),
    ({"candidates": ["S0001"], "colour": "red"}, "extra_forbidden", "colour"),
    ({"candidates": [{"id": "N1", "price": 3}]}, "extra_forbidden", "candidates.0.price"),
    ({"candidates": [7]}, None, "candidates.0"),
    ({"candidates": [""]}, None, "candidates.0"),
    ({"candidates": "S0001"}, "list_type", "candidates"),
    ({"candidates": ["S0001"], "top_n": "3"}, "int_type", "top_n"),
    ({"candidates": ["S0001"], "top_n": 0}, "greater_than_equal", "top_n"),
    ({"candidates": ["S0001"], "return_reasoning": "yes"}, "bool_type", "return_reasoning"),
    ({"candidates": ["S0001"], "decoder": "beam"}, "literal_error", "decoder"),
    ({"candidates": ["S0001"], "deadline_ms": -5}, "greater_than_equal", "deadline_ms"),
])
def test_422_invalid_input(client, h, body, code, param):
    err = h.assert_error(client.post("/v1/rerank", json=body), 422, code)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_422_bad_json_and_bad_header(client, h):
    r = client.post("/v1/rerank", content=b'{"candidates": ["S0001"', headers={"content-type": "application/json"})
    assert h.assert_error(r, 422, "json_invalid")["param"] is None
    r = client.post("/v1/rerank", json={"candidates": ["S0001"]}, headers={"x-decoder": "beam"})
    assert h.assert_error(r, 422)["param"] == "x-decoder"


def test_413_too_many_candidates_and_requests(client, server, h):
    limit = server.rt.settings.max_candidates
    r = client.post("/v1/rerank", json={"candidates": [f"S{i:04d}" for i in range(limit + 1)]})
    assert h.assert_error(r, 413, "too_many_candidates")["param"] == "candidates"
    assert client.post("/v1/rerank", json={"candidates": [f"S{i:04d}" for i in range(limit)]}).status_code == 200
    many = {"requests": [{"candidates": ["S0001"]}] * (server.rt.settings.max_batch_requests + 1)}
    assert h.assert_error(client.post("/v1/rerank/batch", json=many), 413, "too_many_requests")["param"] == "requests"


def test_413_body_too_large(client, server, h):
    limit = server.rt.settings.max_body_bytes
    body = json.dumps({"candidates": ["S0001"], "history": ["x" * 200] * (limit // 200 + 10)}).encode()
    assert len(body) > limit
    r = client.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
    h.assert_error(r, 413, "body_too_large")

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    r = client.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    h.assert_error(r, 413, "body_too_large")
    assert client.get("/healthz").status_code == 200


def test_batch_endpoint(client, h):
    reqs = [{"candidates": h.CANDIDATES[:5], "decoder": "ar"},
            {"candidates": h.CANDIDATES[3:9], "decoder": "diffusion", "top_n": 2},
            {"candidates": ["S0001", {"id": "NEW-7"}], "user_id": "U9"}]
    r = client.post("/v1/rerank/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    out = r.json()["responses"]
    assert [o["status"] for o in out] == [200, 200, 200]
    for req, o in zip(reqs, out, strict=True):
        h.assert_permutation(o["response"], req["candidates"], req.get("top_n"))
    assert [o["response"]["decoder"] for o in out[:2]] == ["ar", "diffusion"]
    assert out[2]["response"]["unknown_items"] == ["NEW-7"]
    assert set(r.headers["x-decoder"].split(",")) <= {"ar", "diffusion"}
    h.assert_error(client.post("/v1/rerank/batch", json={"requests": []}), 422, "too_short")
    h.assert_error(client.post("/v1/rerank/batch", json={"requests": [{"candidates": ["a", "a"]}]}), 422)


def test_ops_endpoints(client, server):
    assert client.get("/healthz").json() == {"status": "ok", "versions": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["versions"]) == {"ar", "diffusion"}
    models = client.get("/v1/models").json()
    assert models["ready"] and {d["decoder"] for d in models["decoders"]} == {"ar", "diffusion"}
    assert all(d["version"] and d["max_new_tokens"] == 48 for d in models["decoders"])
    assert all("answer_threshold" in d for d in models["decoders"])  # null: the plain threshold applies
    assert "/" not in json.dumps(models)  # no store paths
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'dgr2_model_info{decoder="ar",model="test-gr2"' in r.text
    assert client.post("/admin/reload").status_code == 404  # no admin token: /admin does not exist


def test_openapi_declares_every_error(client):
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/v1/rerank"]["post"]["responses"]
    for status in ("413", "422", "429", "500", "503", "504"):
        ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse"), (status, ref)
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert "/v1/rerank/batch" in spec["paths"] and "/admin/reload" not in spec["paths"]
    req = spec["components"]["schemas"]["RerankRequest"]
    assert req["additionalProperties"] is False


def test_concurrent_requests_are_batched(server, h, monkeypatch):
    calls: list[int] = []
    server.slow_down(monkeypatch, "ar", 0.3, calls)  # the first batch holds the worker; the rest pile up
    before = h.metric(server.metrics(), "dgr2_batch_size_count", decoder="ar")

    def one(i):
        with server.client() as c:
            return c.post("/v1/rerank", json={"candidates": h.CANDIDATES[: 3 + i % 5], "decoder": "ar"})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    for i, r in enumerate(responses):
        h.assert_permutation(r.json(), h.CANDIDATES[: 3 + i % 5])
    assert max(calls) > 1 and sum(calls) == 8
    m = server.metrics()
    batches = h.metric(m, "dgr2_batch_size_count", decoder="ar") - before
    assert batches == len(calls) < 8
    assert h.metric(m, "dgr2_batch_size_bucket", decoder="ar", le="1.0") < h.metric(
        m, "dgr2_batch_size_count", decoder="ar")  # some batch held more than one request


def test_decode_failure_fails_only_its_batch(client, server, h, monkeypatch):
    reranker = server.rt.models.engine("diffusion").reranker
    real, failed = reranker.rank, []

    def flaky(requests):
        if not failed:
            failed.append(len(requests))
            raise RuntimeError("CUDA error at /secret/path/kernel.py:12")
        return real(requests)

    monkeypatch.setattr(reranker, "rank", flaky)
    err = h.assert_error(client.post("/v1/rerank", json={"candidates": ["S0001", "S0002"], "decoder": "diffusion"}),
                         500, "decode_failed")
    assert "secret" not in err["message"] and "CUDA" not in err["message"]
    r = client.post("/v1/rerank", json={"candidates": ["S0001", "S0002"], "decoder": "diffusion"})
    assert r.status_code == 200  # the worker carried on


def test_request_metrics_by_decoder_and_status(client, server, h):
    client.post("/v1/rerank", json={"candidates": ["S0001"], "decoder": "ar"})
    client.post("/v1/rerank", json={"candidates": []})
    m = server.metrics()
    assert h.metric(m, "dgr2_requests_total", decoder="ar", status="200", model=h.MODEL) >= 1
    assert h.metric(m, "dgr2_requests_total", decoder="none", status="422") >= 1
    assert h.metric(m, "dgr2_rejections_total", reason="invalid") >= 1
    for name in ("dgr2_generated_tokens_total", "dgr2_forward_passes_total", "dgr2_decode_duration_seconds_count",
                 "dgr2_queue_duration_seconds_count", "dgr2_request_duration_seconds_count"):
        assert h.metric(m, name, decoder="ar") > 0, name
    assert h.metric(m, "dgr2_queue_depth", decoder="ar") == 0


def test_both_decoders_decode_on_the_one_torch_thread(client, server, h, monkeypatch):
    """Every decode runs on the runtime's torch thread (dgr2/service/torch_thread.py: a thread per decoder
    made OpenMP stop spinning and doubled a diffusion request's latency)."""
    threads: dict[str, str] = {}
    for decoder in ("ar", "diffusion"):
        reranker = server.rt.models.engine(decoder).reranker

        def record(requests, real=reranker.rank, decoder=decoder):
            threads[decoder] = threading.current_thread().name
            return real(requests)

        monkeypatch.setattr(reranker, "rank", record)
    for decoder in ("ar", "diffusion"):
        assert client.post("/v1/rerank", json=h.rerank_body(decoder=decoder)).status_code == 200
    assert threads["ar"] == threads["diffusion"]
    assert threads["ar"].startswith("dgr2-torch")
