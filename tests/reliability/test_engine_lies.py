"""The service checks what the engine returns before it uses it, on every path: a ranking that is not a
permutation of the candidates, or relevance scores that are not one finite number in [0, 1] per
candidate, is a 500 ``decode_failed`` for that request alone (in ``/v1/rerank/batch`` too, where the other
items are still served), and is never recorded as shadow agreement. The engine is made to lie by wrapping
the in-process server's ``Reranker.rank``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

CANDIDATES = [f"S{i:04d}" for i in range(5)]
# ways an engine could break its promise of a permutation
BAD_ORDERS: dict[str, Callable[[list[int]], list[int]]] = {
    "a duplicate": lambda o: o[:-1] + o[:1],
    "one missing": lambda o: o[:-1],
    "an index out of the set": lambda o: [*o[:-1], len(o)],
}
# ... and of one relevance score in [0, 1] per candidate, aligned with the order
BAD_RELEVANCE: dict[str, Callable[[list[float]], list[float]]] = {
    "NaN": lambda r: [float("nan"), *r[1:]],
    "one short": lambda r: r[:-1],
    "one too many": lambda r: [*r, 0.0],
    "infinite": lambda r: [float("inf"), *r[1:]],
}


@pytest.fixture(scope="module")
def srv(shared_store, h) -> Iterator:
    """Both decoders, and every AR request shadowed by the diffusion decoder (diffusion requests by AR)."""
    with h.running(h.settings_for(shared_store, shadow_rate=1.0, ab_split="ar=1")) as server:
        yield server


def lie(monkeypatch, srv, decoder: str, edit: Callable) -> None:
    """From now on ``decoder``'s engine passes each result through ``edit(result)``."""
    reranker = srv.rt.models.engine(decoder).reranker
    real = reranker.rank

    def lying(requests):
        results = real(requests)
        for r in results:
            edit(r)
        return results

    monkeypatch.setattr(reranker, "rank", lying)


def shadow_observations(srv, h) -> float:
    return h.metric(srv.metrics(), "dgr2_shadow_agreement_count")


def settled(srv, h, shadow_batches: float) -> None:
    """Wait until the shadow decoder has decoded ``shadow_batches`` batches and every comparison has ended (a
    comparison is a task of the runtime from before the served answer is sent until it has recorded)."""
    h.wait_for(lambda: h.metric(srv.metrics(), "dgr2_batch_size_count", decoder="diffusion") >= shadow_batches
               and not srv.rt._tasks, 20, "the shadow decodes and their comparisons")


def _shadow_baseline(srv, h):
    """Once every earlier shadow decode has settled: the shadow observations so far and the number of
    diffusion batches decoded."""
    settled(srv, h, 0)
    return shadow_observations(srv, h), h.metric(srv.metrics(), "dgr2_batch_size_count", decoder="diffusion")


def _order_editor(bad):
    def edit(result):
        result.order = bad(list(result.order))
    return edit


def _relevance_editor(bad):
    def edit(result):
        result.relevance = bad(list(result.relevance))
    return edit


def _assert_only_the_lying_item_fails(srv, h):
    """A batch of the lying decoder's request and an honest one: one bad item does not take the batch down."""
    body = {"requests": [{"candidates": CANDIDATES, "decoder": "ar"},
                         {"candidates": CANDIDATES[:3], "decoder": "diffusion"}]}
    r = httpx.post(f"{srv.url}/v1/rerank/batch", json=body, timeout=60)
    assert r.status_code == 200, r.text
    lied, honest = r.json()["responses"]
    assert lied["status"] == 500 and lied["error"]["code"] == "decode_failed", lied
    assert honest["status"] == 200, honest
    h.assert_permutation(honest["response"], CANDIDATES[:3])


@pytest.mark.parametrize("kind", sorted(BAD_ORDERS))
def test_a_non_permutation_fails_only_its_item_of_a_batch(srv, h, monkeypatch, kind):
    lie(monkeypatch, srv, "ar", _order_editor(BAD_ORDERS[kind]))
    _assert_only_the_lying_item_fails(srv, h)


@pytest.mark.parametrize("kind", sorted(BAD_RELEVANCE))
def test_bad_relevance_scores_are_a_decode_error_never_a_200(srv, h, monkeypatch, kind):
    lie(monkeypatch, srv, "ar", _relevance_editor(BAD_RELEVANCE[kind]))
    r = httpx.post(f"{srv.url}/v1/rerank", json={"candidates": CANDIDATES, "decoder": "ar"}, timeout=60)
    h.assert_error(r, 500, "decode_failed")
    _assert_only_the_lying_item_fails(srv, h)


@pytest.mark.parametrize("kind", sorted(BAD_ORDERS))
def test_a_shadow_non_permutation_is_not_recorded_as_agreement(srv, h, monkeypatch, kind):
    before, batches = _shadow_baseline(srv, h)
    lie(monkeypatch, srv, "diffusion", _order_editor(BAD_ORDERS[kind]))  # the shadow decoder lies
    r = httpx.post(f"{srv.url}/v1/rerank", json={"candidates": CANDIDATES}, timeout=60)
    assert r.status_code == 200 and r.headers["x-decoder"] == "ar", r.text  # the served answer is unaffected
    h.assert_permutation(r.json(), CANDIDATES)
    settled(srv, h, batches + 1)
    assert shadow_observations(srv, h) == before


@pytest.mark.parametrize("kind", sorted(BAD_ORDERS))
def test_a_served_non_permutation_is_not_compared_in_the_shadow(srv, h, monkeypatch, kind):
    before, batches = _shadow_baseline(srv, h)
    lie(monkeypatch, srv, "ar", _order_editor(BAD_ORDERS[kind]))  # the served decoder lies
    r = httpx.post(f"{srv.url}/v1/rerank", json={"candidates": CANDIDATES}, timeout=60)
    h.assert_error(r, 500, "decode_failed")
    settled(srv, h, batches)  # a shadow comparison, if one was started (before the answer), has ended
    assert shadow_observations(srv, h) == before


def test_honest_answers_are_recorded_as_agreement(srv, h):
    """The control: with an honest engine the same shadowed request is recorded (tau and top-10)."""
    settled(srv, h, 0)
    before = shadow_observations(srv, h)
    r = httpx.post(f"{srv.url}/v1/rerank", json={"candidates": CANDIDATES}, timeout=60)
    assert r.status_code == 200, r.text
    h.wait_for(lambda: shadow_observations(srv, h) == before + 2, 20, "the agreement of this request")
