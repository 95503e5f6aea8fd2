"""Admission and life cycle on dedicated servers: 429 queue full, 504 deadline, 503 before ready and
while draining, and a graceful shutdown that answers every admitted request."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dgr2.service import runtime as service_runtime

pytestmark = pytest.mark.timeout(120)  # every wait inside is bounded well below this


def _post(url: str, body: dict, timeout: float = 30.0) -> httpx.Response:
    return httpx.post(f"{url}/v1/rerank", json=body, timeout=timeout)


def test_429_when_the_queue_is_full(shared_store, h, hold):
    with h.running(h.settings_for(shared_store, queue_limit=2, max_batch_size=1, max_wait_ms=0)) as srv:
        calls: list[int] = []
        gate = hold(srv, "ar", calls)
        body = {"candidates": ["S0001", "S0002"], "decoder": "ar"}
        with ThreadPoolExecutor(8) as pool:
            # the burst comes once the first request is decoding (held at the gate): the queue then takes
            # exactly two (its limit) and the other five are refused at once, while the decode is still held
            first = pool.submit(_post, srv.url, body)
            h.wait_for(lambda: calls, 10, "the first decode to start")
            burst = [pool.submit(_post, srv.url, body) for _ in range(7)]
            h.wait_for(lambda: sum(f.done() for f in burst) >= 5, 30, "five refusals")
            assert srv.rt.batchers["ar"].depth == 2 and not first.done()
            gate.open()
            responses = [first.result(timeout=30), *(f.result(timeout=30) for f in burst)]
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 3 + [429] * 5, codes  # one decoding + two queued admitted, the rest refused
        assert calls == [1, 1, 1]
        for r in responses:
            if r.status_code == 429:
                h.assert_error(r, 429, "queue_full")
                assert int(r.headers["retry-after"]) >= 1
            else:
                h.assert_permutation(r.json(), body["candidates"])
        m = srv.metrics()
        assert h.metric(m, "dgr2_rejections_total", decoder="ar", reason="queue_full") == codes.count(429)
        assert h.metric(m, "dgr2_requests_total", decoder="ar", status="429") == codes.count(429)
        # the other decoder's queue is independent
        assert _post(srv.url, {"candidates": ["S0001"], "decoder": "diffusion"}).status_code == 200


def test_504_deadline_passes_while_queued_and_is_not_decoded(shared_store, h, hold):
    with h.running(h.settings_for(shared_store, max_batch_size=1, max_wait_ms=0)) as srv:
        calls: list[int] = []
        gate = hold(srv, "ar", calls)  # the first decode holds the worker until the gate opens
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(_post, srv.url, {"candidates": ["S0001", "S0002"], "decoder": "ar"})
            h.wait_for(lambda: calls, 10, "the first decode to start")
            late = _post(srv.url, {"candidates": ["S0003", "S0004"], "decoder": "ar", "deadline_ms": 100})
            gate.log(f"late answered {late.status_code}")
            # answered at its deadline, not after the decode ahead of it: that decode is still held
            assert gate.events == ["ar decode started", "late answered 504"], gate.events
            assert srv.rt.batchers["ar"].depth == 0  # and its queue slot is free again
            gate.open()
            assert slow.result(timeout=30).status_code == 200
        h.assert_error(late, 504, "deadline_exceeded")
        ok = _post(srv.url, {"candidates": ["S0003"], "decoder": "ar", "deadline_ms": 20_000})
        assert ok.status_code == 200
        assert calls == [1, 1]  # the late request was never decoded: the worker went from the first to this one
        assert h.metric(srv.metrics(), "dgr2_rejections_total", decoder="ar", reason="deadline") == 1


def test_503_before_ready(shared_store, h, monkeypatch):
    release = threading.Event()
    real = service_runtime.warm_up

    def held_warm_up(models):
        release.wait(timeout=20)
        real(models)

    monkeypatch.setattr(service_runtime, "warm_up", held_warm_up)
    with h.running(h.settings_for(shared_store), ready=False) as srv:
        try:
            assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200  # alive, not ready
            h.assert_error(httpx.get(f"{srv.url}/readyz", timeout=5), 503, "not_ready")
            r = _post(srv.url, {"candidates": ["S0001"]})
            h.assert_error(r, 503, "not_ready")
            assert r.headers["retry-after"] == "1"
            assert not httpx.get(f"{srv.url}/v1/models", timeout=5).json()["ready"]
        finally:
            release.set()
        srv.wait_ready()
        assert _post(srv.url, {"candidates": ["S0001"]}).status_code == 200
        assert h.metric(srv.metrics(), "dgr2_rejections_total", reason="not_ready") == 1


def test_graceful_shutdown_answers_every_admitted_request(shared_store, h, monkeypatch):
    n = 12
    with h.running(h.settings_for(shared_store, max_batch_size=4, max_wait_ms=0)) as srv:
        calls: list[int] = []
        for decoder in ("ar", "diffusion"):
            srv.slow_down(monkeypatch, decoder, 0.25, calls)
        bodies = [{"candidates": h.CANDIDATES[: 2 + i % 6], "decoder": ("ar", "diffusion")[i % 2]}
                  for i in range(n)]
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(_post, srv.url, b) for b in bodies]
            rt = srv.rt
            h.wait_for(lambda: sum(b.depth for b in rt.batchers.values()) + sum(calls) == n, 10,
                       "all requests admitted")
            srv.server.request_shutdown()  # what SIGTERM does
            h.wait_for(lambda: rt.draining, 5, "draining")
            late = _post(srv.url, {"candidates": ["S0001"]})  # still listening, but refusing
            h.assert_error(late, 503, "draining")
            h.assert_error(httpx.get(f"{srv.url}/readyz", timeout=5), 503, "draining")
            responses = [f.result(timeout=30) for f in futures]
        assert [r.status_code for r in responses] == [200] * n
        for body, r in zip(bodies, responses, strict=True):
            h.assert_permutation(r.json(), body["candidates"])
        srv.thread.join(timeout=30)
        assert not srv.thread.is_alive()  # the server went on to stop by itself
