"""Deadlines: a request past ``deadline_ms`` is answered 504 at its deadline and gives its queue slot
back at once; a long decode never holds the event loop (health, readiness and metrics keep answering).

Where a test needs a decode in flight it holds it at a gate (``Server.hold``) and asserts the order of
events: the 504 came while the decode ahead of it was still held, not a duration against a bound. The
long-decode test runs real ones (512 tokens). Durations are recorded as figures only.
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


def test_a_request_past_its_deadline_frees_its_queue_slot(one_slot, h, hold, figures):
    srv = one_slot
    calls: list[int] = []
    gate = hold(srv, "ar", calls)
    body = {"candidates": ["S0001", "S0002", "S0003"], "decoder": "ar"}
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(_post, srv.url, body)  # holds the worker until the gate opens
        h.wait_for(lambda: calls, 10, "the first decode to start")
        late = pool.submit(_post, srv.url, {**body, "deadline_ms": 600})  # takes the only queue slot
        h.wait_for(lambda: srv.rt.batchers["ar"].depth == 1, 5, "the late request to be queued")
        full, _ = _post(srv.url, body)
        h.assert_error(full, 429, "queue_full")  # the slot is taken while it waits
        late_r, late_s = late.result(timeout=30)
        gate.log(f"late answered {late_r.status_code}")
        h.assert_error(late_r, 504, "deadline_exceeded")
        assert srv.rt.batchers["ar"].depth == 0  # its slot is back at once, not when the worker gets to it
        after = pool.submit(_post, srv.url, body)  # the next request takes the freed slot ...
        h.wait_for(lambda: srv.rt.batchers["ar"].depth == 1 or after.done(), 10, "the next request to be queued")
        assert not after.done(), after.result()[0].text  # ... queued, not refused (a 429 comes back at once)
        # all of that while the first decode was still held: the 504 came at its deadline, not after it
        assert gate.events == ["ar decode started", "late answered 504"], gate.events
        gate.open()
        assert first.result(timeout=30)[0].status_code == 200
        after_r, _ = after.result(timeout=30)
        assert after_r.status_code == 200, after_r.text
        h.assert_permutation(after_r.json(), body["candidates"])
    assert calls == [1, 1]  # the late request was never decoded
    figures.update(deadline_ms=600, late_answered_s=round(late_s, 3), sent=4, answered_200=2, answered_429=1,
                   answered_504=1)
    m = srv.metrics()
    assert h.metric(m, "dgr2_queue_depth", decoder="ar") == 0


def test_a_deadline_passing_mid_decode_answers_504_and_the_worker_goes_on(one_slot, h, hold, figures):
    srv = one_slot
    calls: list[int] = []
    gate = hold(srv, "diffusion", calls)
    body = {"candidates": ["S0004", "S0005"], "decoder": "diffusion"}
    r, seconds = _post(srv.url, {**body, "deadline_ms": 400})  # decoding starts at once, and is held
    gate.log(f"answered {r.status_code}")
    h.assert_error(r, 504, "deadline_exceeded")
    assert gate.events == ["diffusion decode started", "answered 504"], gate.events  # mid-decode
    gate.open()
    ok, _ = _post(srv.url, body)  # the worker finishes the abandoned decode, then decodes this one
    assert ok.status_code == 200 and calls == [1, 1]
    h.assert_permutation(ok.json(), body["candidates"])
    assert gate.events[-1] == "diffusion decode ended"
    figures.update(deadline_ms=400, answered_s=round(seconds, 3))


PROBED = ("/healthz", "/readyz", "/metrics")


def test_health_answers_during_a_long_decode(shared_store, h, figures):
    """A real 512-token decode per decoder runs in the decoder thread; every probe path is answered while
    each decode is in flight. Order of events, not latency: each decode logs its start and end, the prober
    logs each answer; a decode that has seen no answer on some path by the end of its real work stays in
    flight until it does (at most 30 s), so a blocked event loop fails the test instead of slowing it."""
    settings = h.settings_for(shared_store, max_new_tokens=512, max_batch_size=4)
    with h.running(settings) as srv:
        events: list[tuple] = []  # ("start" | "decoded" | "end", decoder) and ("probe", path, status, seconds)
        cond = threading.Condition()
        done = threading.Event()

        def log(*event) -> int:
            with cond:
                events.append(event)
                cond.notify_all()
                return len(events) - 1

        def paths_answered_since(i: int) -> set[str]:
            return {e[1] for e in events[i:] if e[0] == "probe" and e[2] == 200}

        for decoder in ("ar", "diffusion"):
            reranker = srv.rt.models.engine(decoder).reranker

            def in_flight(requests, real=reranker.rank, decoder=decoder):
                start = log("start", decoder)
                out = real(requests)
                log("decoded", decoder)
                with cond:  # only waits if the event loop answered nothing on some path meanwhile
                    cond.wait_for(lambda: paths_answered_since(start) == set(PROBED), timeout=30)
                log("end", decoder)
                return out

            reranker.rank = in_flight  # an instance attribute: removed below, the class method stays

        def probe() -> None:
            with srv.client(timeout=10) as c:
                while not done.is_set():
                    for path in PROBED:
                        t0 = time.monotonic()
                        status = c.get(path).status_code
                        log("probe", path, status, time.monotonic() - t0)
                    time.sleep(0.02)

        bodies = [{"candidates": h.CANDIDATES, "decoder": d, "history": h.HISTORY} for d in ("ar", "diffusion")]
        try:
            with ThreadPoolExecutor(3) as pool:
                prober = pool.submit(probe)
                h.wait_for(lambda: paths_answered_since(0) == set(PROBED), 30, "the prober to start")
                t0 = time.monotonic()
                decodes = list(pool.map(lambda b: _post(srv.url, b, timeout=120), bodies))
                decode_s = time.monotonic() - t0
                done.set()
                prober.result(timeout=30)
        finally:
            for decoder in ("ar", "diffusion"):
                vars(srv.rt.models.engine(decoder).reranker).pop("rank", None)
        for (r, _), body in zip(decodes, bodies, strict=True):
            assert r.status_code == 200, r.text
            h.assert_permutation(r.json(), body["candidates"])
            assert r.json()["usage"]["generated_tokens"] >= 400  # a long decode: near the 420-token trace budget
        probes = [e for e in events if e[0] == "probe"]
        assert {e[2] for e in probes} == {200}
        during_compute = {}
        for decoder in ("ar", "diffusion"):
            start, decoded, end = (events.index((kind, decoder)) for kind in ("start", "decoded", "end"))
            answered = [e for e in events[start:end] if e[0] == "probe"]
            assert {e[1] for e in answered} == set(PROBED), (decoder, events)  # answered while in flight
            during_compute[decoder] = sum(e[0] == "probe" for e in events[start:decoded])
        latencies = sorted(e[3] for e in probes)
        figures.update(decode_s=round(decode_s, 2), probes=len(probes), probes_during_real_decode=during_compute,
                       probe_p50_ms=round(1000 * latencies[len(latencies) // 2], 1),
                       probe_max_ms=round(1000 * latencies[-1], 1))
