"""Overload and soak: bounded load above capacity is refused with 429 + Retry-After beyond the queue
limit while readiness keeps answering, and nothing is left queued when the load stops; a bounded soak of
a real ``dgr2 serve`` process leaves its resident memory flat. Every request sent gets an answer.
Latencies are recorded as figures; no assertion compares one with a bound.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.timeout(240)

BODY = {"candidates": ["S0001", "S0002", "S0003", "S0004"], "history": ["S0051", "S0027"], "decoder": "ar"}


def _timed(client: httpx.Client, body: dict) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = client.post("/v1/rerank", json=body)
    return r, time.monotonic() - t0


def test_overload_is_refused_with_429_and_latency_recovers(shared_store, h, monkeypatch, hold, figures):
    """Load above capacity: 429 beyond the queue limit, readiness answered while the queue is full (the first
    decode is held at a gate until it was), the other decoder unaffected; once the load stops, the queue is
    empty and each new request is decoded on its own, with nothing queued ahead. Latencies are figures."""
    workers, per_worker, decode_s = 16, 6, 0.2
    settings = h.settings_for(shared_store, queue_limit=4, max_batch_size=2, max_wait_ms=5, max_new_tokens=8)
    with h.running(settings) as srv:
        with srv.client() as c:
            baseline = [_timed(c, BODY)[1] for _ in range(5)]
        calls: list[int] = []
        srv.slow_down(monkeypatch, "ar", decode_s)  # capacity: 2 requests per (0.2 s + a tiny decode)
        gate = hold(srv, "ar", calls)  # ... once the gate opens

        outcomes: Counter = Counter()
        latencies_200: list[float] = []
        probes: list[tuple[int, float]] = []
        stop = threading.Event()
        lock = threading.Lock()

        def load(_: int) -> None:  # bounded: per_worker requests each, back to back
            with srv.client() as c:
                for _ in range(per_worker):
                    try:
                        r, s = _timed(c, BODY)
                    except httpx.TransportError as e:
                        with lock:
                            outcomes[f"transport:{type(e).__name__}"] += 1
                        continue
                    with lock:
                        outcomes[r.status_code] += 1
                    if r.status_code == 200:
                        h.assert_permutation(r.json(), BODY["candidates"])
                        latencies_200.append(s)
                    else:
                        h.assert_error(r, 429, "queue_full")
                        assert 1 <= int(r.headers["retry-after"]) <= 60

        def probe() -> None:  # readiness all along (figures), besides the one asserted below
            with srv.client(timeout=10) as c:
                while not stop.is_set():
                    t0 = time.monotonic()
                    probes.append((c.get("/readyz").status_code, time.monotonic() - t0))
                    time.sleep(0.05)

        with ThreadPoolExecutor(workers + 1) as pool:
            prober = pool.submit(probe)
            t0 = time.monotonic()
            loads = [pool.submit(load, i) for i in range(workers)]
            h.wait_for(lambda: srv.rt.batchers["ar"].depth == settings.queue_limit and outcomes[429] > 0, 30,
                       "a full queue and a refusal")
            with srv.client() as c:  # while the queue is full and a decode is held
                ready = c.get("/readyz")
                gate.log(f"readyz {ready.status_code}")
            assert gate.events == ["ar decode started", "readyz 200"], gate.events
            # the other decoder's queue admits meanwhile: its batch waits for the one torch thread (held)
            other = pool.submit(lambda: httpx.post(f"{srv.url}/v1/rerank", json={**BODY, "decoder": "diffusion"},
                                                   timeout=60))
            h.wait_for(lambda: srv.rt.torch_executor._work_queue.qsize() >= 1 or other.done(), 10,
                       "the diffusion batch to wait for the torch thread")
            assert not other.done(), other.result().text  # admitted, not refused
            gate.open()
            assert other.result(timeout=60).status_code == 200
            for f in loads:
                f.result(timeout=120)
            load_s = time.monotonic() - t0
            stop.set()
            prober.result(timeout=10)

        h.wait_for(lambda: srv.rt.batchers["ar"].depth == 0, 10, "the queue to drain")
        decoded_before = len(calls)
        with srv.client() as c:
            after = []
            for _ in range(5):
                r, s = _timed(c, BODY)
                assert r.status_code == 200, r.text
                after.append(s)
        sent = workers * per_worker
        figures.update(sent=sent, answered_200=outcomes[200], answered_429=outcomes[429], load_s=round(load_s, 2),
                       offered_rps=round(sent / load_s, 1), served_rps=round(outcomes[200] / load_s, 1),
                       baseline_p50_ms=round(1000 * statistics.median(baseline)),
                       under_load_p50_ms=round(1000 * statistics.median(latencies_200)),
                       after_p50_ms=round(1000 * statistics.median(after)),
                       readyz_probes=len(probes), readyz_max_ms=round(1000 * max(s for _, s in probes)))
        assert sum(outcomes.values()) == sent and set(outcomes) <= {200, 429}, outcomes  # nothing lost
        assert outcomes[429] > 0 and outcomes[200] >= settings.queue_limit  # above capacity, still serving
        m = srv.metrics()
        assert h.metric(m, "dgr2_rejections_total", decoder="ar", reason="queue_full") == outcomes[429]
        assert {s for s, _ in probes} == {200}  # readiness answered all along
        # recovered: nothing left queued, so each request after the load is a batch of its own
        assert calls[decoded_before:] == [1] * 5, calls[decoded_before:]
        assert h.metric(m, "dgr2_queue_depth", decoder="ar") == 0


def _soak_bodies(n: int, offset: int) -> list[tuple[str, dict]]:
    """Varied traffic: both decoders, 1..20 candidates, fresh unknown ids and objects, a few invalid
    requests and batch calls; ``(path, body)`` pairs."""
    out = []
    for i in range(offset, offset + n):
        k = 1 + i % 20
        cands: list = [f"S{(i + j) % 60:04d}" for j in range(k - 1)] + [{"id": f"NEW-{i}", "brand": "b", "title": "t"}]
        body = {"candidates": cands, "history": [f"S{(i * 7 + j) % 60:04d}" for j in range(i % 30)],
                "decoder": ("ar", "diffusion")[i % 2], "user_id": f"user-{i}", "top_n": 1 + i % 25}
        if i % 17 == 0:
            out.append(("/v1/rerank", {**body, "candidates": cands + cands[:1]}))  # 422
        elif i % 11 == 0:
            out.append(("/v1/rerank/batch", {"requests": [body, {**body, "decoder": "ar"}]}))
        else:
            out.append(("/v1/rerank", body))
    return out


@pytest.mark.slow
def test_soak_memory_stays_flat(shared_store, serve_process, h, rss, figures):
    srv = serve_process(shared_store.root, "--max-new-tokens", "8", "--max-batch-size", "8",
                        "--queue-limit", "64", "--ab-split", "ar=50,diffusion=50")
    srv.wait_ready()
    pid = srv.proc.pid
    warmup, phase, phases = 50, 80, 3
    counts: Counter = Counter()

    def send(item: tuple[str, dict]) -> None:
        path, body = item
        r = httpx.post(f"{srv.url}{path}", json=body, timeout=60)
        if path.endswith("batch"):
            assert r.status_code == 200, r.text
            assert [x["status"] for x in r.json()["responses"]] == [200, 200]
            counts["answered"] += 1
        elif len(set(map(str, body["candidates"]))) < len(body["candidates"]):
            h.assert_error(r, 422, "duplicate_candidates")
            counts["answered"] += 1
        else:
            assert r.status_code == 200, r.text
            h.assert_permutation(r.json(), body["candidates"], body["top_n"])
            counts["answered"] += 1

    resident = []
    offset = 0
    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        for n in [warmup] + [phase] * phases:
            list(pool.map(send, _soak_bodies(n, offset)))
            offset += n
            resident.append(rss(pid))
    soak_s = time.monotonic() - t0
    mib = [round(r / 2**20, 1) for r in resident]
    figures.update(requests=offset, answered=counts["answered"], seconds=round(soak_s, 1),
                   rss_mib_after_warmup=mib[0], rss_mib_after_each_phase=mib[1:],
                   growth_mib_after_warmup=round(mib[-1] - mib[0], 1))
    assert counts["answered"] == offset  # every request answered as expected
    assert httpx.get(f"{srv.url}/readyz", timeout=5).status_code == 200
    # flat: the last two phases add no more than noise (a leak of 50 KB per request would add 8 MiB)
    assert resident[-1] - resident[1] < 8 * 2**20, mib
