"""Closed-loop HTTP load for ``dgr2 bench service``, run in its own process (so the client's event
loop never shares an interpreter with the benchmark's bookkeeping or the server).

``concurrency`` workers each send one ``POST /v1/rerank`` at a time, back to back, until
``duration_s`` has passed; requests in flight at that moment are awaited and counted. Imports only
``httpx`` and the standard library, so a spawned child starts fast.
"""

from __future__ import annotations

import asyncio
import json
import time
from multiprocessing.connection import Connection

import httpx


async def drive(url: str, bodies: list[dict], concurrency: int, duration_s: float, timeout_s: float) -> dict:
    payloads = [json.dumps(b).encode() for b in bodies]  # serialised once, not on the clock
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    records: list[tuple[float, float, str, float | None, float | None]] = []
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()
        end = start + duration_s

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < end:
                payload = payloads[i % len(payloads)]
                i += concurrency
                t0 = time.perf_counter()
                decode_ms = queue_ms = None
                try:
                    resp = await client.post("/v1/rerank", content=payload, headers=headers)
                    status = str(resp.status_code)
                    if resp.status_code == 200:
                        timing = resp.json()["timing"]
                        decode_ms, queue_ms = timing["decode_ms"], timing["queue_ms"]
                except httpx.HTTPError as e:  # timeouts, refused connections: counted as errors
                    status = type(e).__name__
                records.append((t0 - start, 1000 * (time.perf_counter() - t0), status, decode_ms, queue_ms))

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "records": records}


def run_level(url: str, bodies: list[dict], concurrency: int, duration_s: float, timeout_s: float,
              conn: Connection) -> None:
    """Child-process entry point: drive one level and send the result back through ``conn``."""
    try:
        conn.send(asyncio.run(drive(url, bodies, concurrency, duration_s, timeout_s)))
    except Exception as e:  # the parent reports it; a child traceback alone would be easy to miss
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()
