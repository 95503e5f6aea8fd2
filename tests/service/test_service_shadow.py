"""Shadow mode: the other decoder ranks sampled requests off the critical path, and the agreement it records
is the agreement of the two rankings (Kendall tau, top-10 overlap), each computed here by hand from the
served ranking and the other decoder's ranking of the same request."""

from __future__ import annotations

import pytest

from dgr2.service.metrics import AGREEMENT_BUCKETS

pytestmark = pytest.mark.timeout(120)  # every wait inside is bounded well below this
LE = [*(str(float(b)) for b in AGREEMENT_BUCKETS), "+Inf"]


def tau_by_pairs(a: list[int], b: list[int]) -> float:
    """Kendall tau of two orders of the same items: (concordant - discordant) / pairs."""
    if len(a) < 2:
        return 1.0
    pos = {item: i for i, item in enumerate(b)}
    pairs = [(pos[a[i]] < pos[a[j]]) for i in range(len(a)) for j in range(i + 1, len(a))]
    return (2 * sum(pairs) - len(pairs)) / len(pairs)


def top10(a: list[int], b: list[int]) -> float:
    m = min(10, len(a))
    return len(set(a[:m]) & set(b[:m])) / m


def test_shadow_agreement_is_the_agreement_of_the_two_rankings(shared_store, h, monkeypatch):
    with h.running(h.settings_for(shared_store, shadow_rate=1.0, ab_split="diffusion=1")) as srv, srv.client() as c:
        observed: list[tuple[str, str, float]] = []  # (served decoder, metric, value), as the service observes
        hist = srv.rt.metrics.shadow_agreement
        labels = hist.labels

        def spy(model, decoder, metric):
            child = labels(model, decoder, metric)

            class Observe:
                def observe(self, value):
                    observed.append((decoder, metric, value))
                    child.observe(value)

            return Observe()

        monkeypatch.setattr(hist, "labels", spy)

        def buckets(metric: str) -> list[float]:  # what Prometheus scrapes: the cumulative bucket counts
            m = srv.metrics()
            return [h.metric(m, "dgr2_shadow_agreement_bucket", decoder="diffusion", metric=metric, le=le)
                    for le in LE]

        served, landed, values = {}, {}, {}
        for i, n in enumerate((3, 6, 9, 12)):  # one at a time: each shadow decode is a batch of its own
            before = {m: buckets(m) for m in ("tau", "top10")}
            r = c.post("/v1/rerank", json={"candidates": h.CANDIDATES[:n], "history": h.HISTORY})
            assert r.status_code == 200 and r.headers["x-decoder"] == "diffusion", r.text
            served[n] = [x["index"] for x in r.json()["results"]]
            h.wait_for(lambda i=i: len(observed) == 2 * (i + 1), 20, "the shadow agreement of this request")
            landed[n] = {m: [b - a for a, b in zip(before[m], buckets(m), strict=True)] for m in ("tau", "top10")}
            values[n] = {metric: v for _, metric, v in observed[2 * i:]}
        m = srv.metrics()
        assert h.metric(m, "dgr2_requests_total", decoder="ar") == 0  # shadow work is not a served request
        assert h.metric(m, "dgr2_batch_size_count", decoder="ar") == 4  # ... but it is decode work
        assert {d for d, _, _ in observed} == {"diffusion"}
        # the AR ranking of the same requests: served by AR on its own, as the shadow decode ran
        disagreements = 0
        for n, order in served.items():
            r = c.post("/v1/rerank", json={"candidates": h.CANDIDATES[:n], "history": h.HISTORY, "decoder": "ar"})
            assert r.status_code == 200, r.text
            ar = [x["index"] for x in r.json()["results"]]
            assert sorted(ar) == sorted(order) == list(range(n))
            want = {"tau": tau_by_pairs(order, ar), "top10": top10(order, ar)}
            for metric, value in want.items():
                assert values[n][metric] == pytest.approx(value, abs=1e-12), (n, metric, order, ar)
                # and the scraped histogram has it in the bucket it belongs to
                assert landed[n][metric] == [float(value <= b) for b in (*AGREEMENT_BUCKETS, float("inf"))], \
                    (n, metric, value, landed[n][metric])
            disagreements += order != ar
        assert disagreements >= 1  # the two random-init decoders disagree somewhere: the check has teeth
