"""Deadlines: a request past ``deadline_ms`` is answered 504 at its deadline and gives its queue slot
back at once; a long decode never holds the event loop (health, readiness and metrics keep answering).

Decodes are slowed with a sleep where a test needs a known decode length; the long-decode test runs real
ones (512 tokens).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)


def _post(url: str, body: dict, timeout: float = 30.0) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.post(f"{url}/v1/rerank", json=body, timeout=timeout)
    return r, time.monotonic() - t0


@pytest.fixture(scope="module")
def one_slot(shared_store, h):
    """One request decoding and one queued at most: every slot is visible from outside."""
    with h.running(h.settings_for(shared_store, queue_limit=1, max_batch_size=1, max_wait_ms=0)) as srv:
        yield srv


def test_a_request_past_its_deadline_frees_its_queue_slot(one_slot, h, monkeypatch, figures):
    srv, decode_s = one_slot, 1.5
    calls: list[int] = []
    srv.slow_down(monkeypatch, "ar", decode_s, calls)
    body = {"candidates": ["S0001", "S0002", "S0003"], "decoder": "ar"}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, srv.url, body)  # holds the worker for decode_s
        h.wait_for(lambda: calls, 10, "the first decode to start")
        late = pool.submit(_post, srv.url, {**body, "deadline_ms": 600})  # takes the only queue slot
        h.wait_for(lambda: srv.rt.batchers["ar"].depth == 1, 5, "the late request to be queued")
        full, _ = _post(srv.url, body)
        h.assert_error(full, 429, "queue_full")  # the slot is taken while it waits
        late_r, late_s = late.result(timeout=10)
        h.assert_error(late_r, 504, "deadline_exceeded")
        assert srv.rt.batchers["ar"].depth == 0  # its slot is back at once, not when the worker gets to it
        assert calls == [1]  # the first decode is still running ...
        after, _ = _post(srv.url, body)  # ... and the next request is admitted, not refused (429)
        assert after.status_code == 200, after.text
        h.assert_permutation(after.json(), body["candidates"])
        assert first.result(timeout=30)[0].status_code == 200
    assert calls == [1, 1]  # the late request was never decoded
    figures.update(decode_s=decode_s, deadline_ms=600, late_answered_s=round(late_s, 3),
                   sent=4, answered_200=2, answered_429=1, answered_504=1)
    assert late_s < decode_s  # answered at its deadline, not when the decode ahead of it ended
    m = srv.metrics()
    assert h.metric(m, "dgr2_queue_depth", decoder="ar") == 0


def test_a_deadline_passing_mid_decode_answers_504_and_the_worker_goes_on(one_slot, h, monkeypatch, figures):
    srv = one_slot
    calls: list[int] = []
    srv.slow_down(monkeypatch, "diffusion", 1.5, calls)
    body = {"candidates": ["S0004", "S0005"], "decoder": "diffusion"}
    r, seconds = _post(srv.url, {**body, "deadline_ms": 400})  # decoding starts at once, ends after 1.5 s
    h.assert_error(r, 504, "deadline_exceeded")
    assert seconds < 1.5
    ok, _ = _post(srv.url, body)
    assert ok.status_code == 200 and calls == [1, 1]
    h.assert_permutation(ok.json(), body["candidates"])
    figures.update(deadline_ms=400, answered_s=round(seconds, 3))


def test_health_answers_during_a_long_decode(shared_store, h, figures):
    """A real 512-token decode per decoder runs in the decoder thread; the event loop keeps answering."""
    settings = h.settings_for(shared_store, max_new_tokens=512, max_batch_size=4)
    with h.running(settings) as srv:
        probes: list[tuple[str, int, float]] = []
        done = threading.Event()

        def probe() -> None:
            with srv.client(timeout=10) as c:
                while not done.is_set():
                    for path in ("/healthz", "/readyz", "/metrics"):
                        t0 = time.monotonic()
                        probes.append((path, c.get(path).status_code, time.monotonic() - t0))
                    time.sleep(0.02)

        bodies = [{"candidates": h.CANDIDATES, "decoder": d, "history": h.HISTORY} for d in ("ar", "diffusion")]
        with ThreadPoolExecutor(3) as pool:
            prober = pool.submit(probe)
            t0 = time.monotonic()
            decodes = list(pool.map(lambda b: _post(srv.url, b, timeout=60), bodies))
            decode_s = time.monotonic() - t0
            done.set()
            prober.result(timeout=10)
        for (r, _), body in zip(decodes, bodies, strict=True):
            assert r.status_code == 200, r.text
            h.assert_permutation(r.json(), body["candidates"])
            assert r.json()["usage"]["generated_tokens"] >= 400  # a long decode: near the 420-token trace budget
        latencies = sorted(s for _, _, s in probes)
        figures.update(decode_s=round(decode_s, 2), probes=len(probes),
                       probe_p50_ms=round(1000 * latencies[len(latencies) // 2], 1),
                       probe_max_ms=round(1000 * latencies[-1], 1))
        assert {status for _, status, _ in probes} == {200}
        assert len(probes) >= 15  # probes kept being answered throughout, not once the decodes ended
        assert latencies[-1] < 2.0  # generous: a blocked loop would hold them for the whole decode
