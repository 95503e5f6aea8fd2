"""``results[].relevance_score`` on the wire: never rising down the ranking, in [0, 1], on both decoders,
for repaired answers, under ``top_n`` and in ``/v1/rerank/batch``; and the raw per-candidate gain stays
internal."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)

BODIES = [
    {"history": ["S0051", "S0027", "S0032", "S0021"], "candidates": [f"S{i:04d}" for i in range(12)]},
    {"history": ["S0003"], "candidates": [f"S{i:04d}" for i in range(20, 27)]},
    {"history": [], "candidates": ["S0040", {"id": "NEW-3", "brand": "brand1"}, "S0041", "S0042"]},
    {"history": ["S0010", "S0011"], "candidates": [f"S{i:04d}" for i in range(11, -1, -1)]},
]


def scores(body: dict) -> list[float]:
    return [r["relevance_score"] for r in body["results"]]


def assert_scores(h, body: dict, candidates: list, top_n: int | None = None) -> list[float]:
    h.assert_permutation(body, candidates, top_n)
    s = scores(body)
    assert all(0.0 <= x <= 1.0 for x in s), s
    assert all(a >= b for a, b in zip(s, s[1:], strict=False)), f"score rises down the ranking: {s}"
    assert set(body["results"][0]) == {"index", "item_id", "rank", "relevance_score"}  # nothing raw on the wire
    return s


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_scores_never_rise_on_either_decoder(client, h, decoder):
    seen = []
    for body in BODIES:
        r = client.post("/v1/rerank", json={**body, "decoder": decoder})
        assert r.status_code == 200, r.text
        seen.append(assert_scores(h, r.json(), body["candidates"]))
    # the model's confidence, not the rank: two requests of the same size score differently at the same ranks
    assert seen[0] != seen[3]


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_top_n_keeps_the_head_of_the_full_ranking(client, h, decoder):
    body = {**BODIES[0], "decoder": decoder}
    full = client.post("/v1/rerank", json=body).json()
    assert_scores(h, full, body["candidates"])
    for n in (1, 3, 11):
        cut = client.post("/v1/rerank", json={**body, "top_n": n}).json()
        assert_scores(h, cut, body["candidates"], top_n=n)
        assert cut["results"] == full["results"][:n]


def test_batch_endpoint_scores(client, h):
    reqs = [{**b, "decoder": d, **({"top_n": 3} if i == 2 else {})}
            for i, (b, d) in enumerate(zip(BODIES, ["ar", "diffusion", "ar", "diffusion"], strict=True))]
    r = client.post("/v1/rerank/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    out = r.json()["responses"]
    assert [o["status"] for o in out] == [200] * len(reqs)
    for req, o in zip(reqs, out, strict=True):
        assert_scores(h, o["response"], req["candidates"], req.get("top_n"))


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_scores_never_rise_on_repaired_answers(client, server, h, decoder, damage_rank_two):
    """Answers damaged after decoding (rank 2 a copy of rank 1): the guard repairs every one, and the
    repaired ranking's scores still never rise."""
    vocab = server.rt.models.engine(decoder).reranker.vocab
    damage_rank_two(decoder, vocab)
    for body in BODIES:
        r = client.post("/v1/rerank", json={**body, "decoder": decoder})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["validity"]["repaired"] and data["validity"]["duplicates"] == 1
        assert_scores(h, data, body["candidates"])
