"""A real Prometheus server scrapes the service on loopback; PromQL over its HTTP API must find the
request, token and forward-pass series for each decoder.

Prometheus comes from the Debian package (``bash scripts/install_prometheus.sh``, which ``make test``
runs). Without the binary the test fails under CI and skips elsewhere, naming that command.
"""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)  # every wait inside is bounded well below this


@pytest.fixture()
def prometheus(launch_prometheus, need):
    """start(target) -> base url: Prometheus scraping ``target`` every second."""
    binary = need.binary("prometheus", "bash scripts/install_prometheus.sh (the Debian package prometheus)")

    def start(target: str) -> str:
        return launch_prometheus(binary, {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "dgr2", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}]}]})

    return start


def _query(base: str, promql: str) -> dict[str, float]:
    """Instant query -> {decoder label (or ''): value}."""
    r = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return {s["metric"].get("decoder", ""): float(s["value"][1]) for s in body["data"]["result"]}


def test_prometheus_sees_series_per_decoder(shared_store, h, prometheus):
    with h.running(h.settings_for(shared_store)) as srv:
        base = prometheus(srv.url.removeprefix("http://"))
        with srv.client() as c:
            for decoder in ("ar", "diffusion"):
                for n in (2, 5, 8):
                    r = c.post("/v1/rerank", json={"candidates": h.CANDIDATES[:n], "decoder": decoder})
                    assert r.status_code == 200, r.text
        queries = {
            "requests": 'sum by (decoder) (dgr2_requests_total{job="dgr2", model="test-gr2", status="200"})',
            "tokens": 'sum by (decoder) (dgr2_generated_tokens_total{job="dgr2"})',
            "passes": 'sum by (decoder) (dgr2_forward_passes_total{job="dgr2"})',
            "latency": 'sum by (decoder) (dgr2_decode_duration_seconds_count{job="dgr2"})',
        }
        found: dict[str, dict[str, float]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                found = {k: _query(base, q) for k, q in queries.items()}
            except httpx.HTTPError:  # Prometheus still starting
                found = {}
            if found and all({"ar", "diffusion"} <= set(v) for v in found.values()):
                break
            time.sleep(0.5)
        assert found, "Prometheus never answered"
        for name, by_decoder in found.items():
            assert by_decoder.get("ar", 0) > 0 and by_decoder.get("diffusion", 0) > 0, (name, found)
        assert found["requests"] == {"ar": 3.0, "diffusion": 3.0}
        assert _query(base, 'up{job="dgr2"}') == {"": 1.0}
