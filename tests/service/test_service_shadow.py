"""Shadow mode: the other decoder ranks sampled requests off the critical path; agreement is recorded."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)  # every wait inside is bounded well below this


def test_shadow_agreement_is_recorded(shared_store, h):
    with h.running(h.settings_for(shared_store, shadow_rate=1.0, ab_split="diffusion=1")) as srv:
        for n in (3, 6, 9):
            r = httpx.post(f"{srv.url}/v1/rerank", json={"candidates": h.CANDIDATES[:n]}, timeout=30)
            assert r.status_code == 200 and r.headers["x-decoder"] == "diffusion"

        def recorded() -> bool:
            m = srv.metrics()
            return all(h.metric(m, "dgr2_shadow_agreement_count", decoder="diffusion", metric=k) == 3
                       for k in ("tau", "top10"))

        h.wait_for(recorded, 20, "shadow agreement for 3 requests")
        m = srv.metrics()
        assert h.metric(m, "dgr2_requests_total", decoder="ar") == 0  # shadow work is not a served request
        assert h.metric(m, "dgr2_batch_size_count", decoder="ar") >= 1  # ... but it is decode work
        tau_sum = h.metric(m, "dgr2_shadow_agreement_sum", metric="tau")
        assert -3.0 <= tau_sum <= 3.0
