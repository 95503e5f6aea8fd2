"""What the comparison page needs from the API, against a real server: ``return_passes`` (per row, through
a real batch), ``reasoning_steps``, ``GET /v1/example-request``, ``POST /v1/items``, and the page's files."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files

import httpx
import pytest

from dgr2.model.reasoning import read_trace
from dgr2.service.reasoning import reasoning_steps
from dgr2.service.schemas import RerankRequest

pytestmark = pytest.mark.timeout(120)


def assert_passes_consistent(data: dict) -> None:
    """The pass record accounts for every forward pass and every output position, once."""
    rec, usage = data["passes"], data["usage"]
    positions = rec["positions"]
    assert len(positions) == usage["forward_passes"]
    assert len(rec["tokens"]) == usage["generated_tokens"]
    assert sorted(p for ps in positions for p in ps) == list(range(usage["generated_tokens"]))
    assert all(ps == sorted(ps) for ps in positions)
    if data["decoder"] == "ar":
        assert rec["block_size"] == 1 and positions == [[p] for p in range(usage["generated_tokens"])]
    else:
        assert positions[0] == []  # the prefill
        assert all(len({p // rec["block_size"] for p in ps}) == 1 for ps in positions if ps)


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
def test_return_passes_records_every_pass(client, server, h, decoder):
    body = h.rerank_body(decoder=decoder, return_passes=True)
    data = client.post("/v1/rerank", json=body).json()
    assert_passes_consistent(data)
    if decoder == "diffusion":
        assert data["passes"]["block_size"] == server.rt.models.engine("diffusion").info()["block_size"]
    assert data["passes"]["tokens"][-1] == "<eos>" or len(data["passes"]["tokens"]) == 48  # stopped, or the budget
    plain = client.post("/v1/rerank", json=h.rerank_body(decoder=decoder)).json()
    assert "passes" not in plain and "reasoning_steps" not in plain  # off by default
    assert plain["results"] == data["results"] and plain["usage"] == data["usage"]  # and changes nothing


def test_the_flag_travels_per_row_through_a_batch(shared_store, h, hold):
    with h.running(h.settings_for(shared_store, max_batch_size=4, max_wait_ms=0)) as srv:
        calls: list[int] = []
        gate = hold(srv, "diffusion", calls)
        bodies = [h.rerank_body(decoder="diffusion", return_passes=i == 1, candidates=h.CANDIDATES[i:i + 6])
                  for i in range(3)]
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(httpx.post, f"{srv.url}/v1/rerank", json=bodies[0], timeout=60)
            h.wait_for(lambda: calls, 10, "the first decode to start")
            rest = [pool.submit(httpx.post, f"{srv.url}/v1/rerank", json=b, timeout=60) for b in bodies[1:]]
            h.wait_for(lambda: srv.rt.batchers["diffusion"].depth == 2, 10, "two requests queued")
            gate.open()
            answers = [first.result(timeout=60).json(), *(f.result(timeout=60).json() for f in rest)]
        assert calls == [1, 2]  # the second and third were decoded in one batch
        assert "passes" not in answers[0] and "passes" not in answers[2]
        assert_passes_consistent(answers[1])


def test_reasoning_steps_name_the_requests_items():
    req = RerankRequest(history=["H1", "H2", {"id": "H3", "brand": "b"}], candidates=["A", "B", "C", "D"])
    text = ("<c2> <r:brand> <h1> <r:co> <h3> <v4> <c2> <c9> <v1> <c9> "
            "<c1> <r:cat> <h7> <v0> <c1> <c3> <r:brand> <h2> <v2>")
    steps = reasoning_steps(text, req, max_history=50)
    got = [(s.index, s.item_id, s.strength, s.complete) for s in steps]
    assert got == [(1, "B", 4, True), (8, None, 1, True), (0, "A", 0, True), (2, "C", 2, False)]
    assert [(e.relation, e.history_recency, e.history_item_id) for e in steps[0].evidence] == [
        ("brand", 1, "H3"), ("co_occurrence", 3, "H1")]
    assert steps[2].evidence[0].history_item_id is None  # <h7>: the request has three history items
    # the prompt shows only the max_history most recent: <h3> then names nothing
    cut = reasoning_steps(text, req, max_history=2)
    assert [e.history_item_id for e in cut[0].evidence] == ["H3", None]
    assert reasoning_steps(text, req, max_history=0)[0].evidence[0].history_item_id is None


def test_reasoning_steps_come_with_return_reasoning(client, h):
    body = h.rerank_body(decoder="ar", return_reasoning=True)
    data = client.post("/v1/rerank", json=body).json()
    steps = data["reasoning_steps"]
    assert isinstance(steps, list)
    for s in steps:
        assert s["item_id"] == (h.CANDIDATES[s["index"]] if s["index"] < len(h.CANDIDATES) else None)
        for e in s["evidence"]:
            r = e["history_recency"]
            assert e["history_item_id"] == (h.HISTORY[-r] if r <= len(h.HISTORY) else None)
    # the steps are the reasoning text read entry by entry
    assert [s["index"] for s in steps] == [e.slot for e in read_trace(data["reasoning"].split()).entries]


def test_example_request_is_drawn_from_the_catalog_and_ranks(client, server):
    data = client.get("/v1/example-request").json()
    settings, catalog_ids = server.rt.settings, set(server.rt.models.engine("ar").catalog_ids)
    assert len(data["candidates"]) == settings.max_candidates and len(data["history"]) == 20
    assert len(set(data["history"] + data["candidates"])) == len(data["history"]) + len(data["candidates"])
    assert set(data["history"] + data["candidates"]) <= catalog_ids
    r = client.post("/v1/rerank", json=data)
    assert r.status_code == 200, r.text
    seeded = [client.get("/v1/example-request", params={"seed": s, "candidates": 5, "history": 3}).json()
              for s in (7, 7, 8)]
    assert seeded[0] == seeded[1] != seeded[2]
    assert len(seeded[0]["candidates"]) == 5 and len(seeded[0]["history"]) == 3


@pytest.mark.parametrize("params, param", [
    ({"candidates": 21}, "candidates"),  # over this server's max_candidates (20)
    ({"candidates": 101}, "candidates"),  # over what any model names
    ({"history": 51}, "history"),
    ({"candidates": 20, "history": 45}, "candidates"),  # the test catalog has 60 items
    ({"seed": -1}, "seed"),
    ({"candidates": "many"}, "candidates"),
])
def test_example_request_refuses_what_it_cannot_draw(client, h, params, param):
    r = client.get("/v1/example-request", params=params)
    assert h.assert_error(r, 422)["param"] == param


def test_items_describes_catalog_items_in_order(client, server):
    item = server.rt.models.engine("ar").describe("S0003")
    ids = ["S0003", "NOT-IN-CATALOG", "S0003", "<b>x</b>"]
    got = client.post("/v1/items", json={"ids": ids}).json()["items"]
    assert [g["id"] for g in got] == ids
    assert [g["known"] for g in got] == [True, False, True, False]
    assert (got[0]["brand"], got[0]["category"], got[0]["title"]) == (item.brand, item.category, item.title)
    assert got[1] == {"id": "NOT-IN-CATALOG", "known": False, "title": None, "brand": None, "category": None}


@pytest.mark.parametrize("body", [{"ids": []}, {"ids": ["x"] * 257}, {"ids": [""]}, {"ids": ["x" * 257]}, {}])
def test_items_refuses_bad_lookups(client, h, body):
    h.assert_error(client.post("/v1/items", json=body), 422)


def test_the_page_and_its_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert '<script src="/static/page.js"' in r.text and '<link rel="stylesheet" href="/static/page.css">' in r.text
    assert client.get("/static/page.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/page.css").headers["content-type"].startswith("text/css")
    for path in ("/static/index.html", "/static/app.py", "/static/..%2fapp.py", "/static/"):
        assert client.get(path).status_code == 404, path
    assert "/" not in client.get("/openapi.json").json()["paths"]  # a page, not an API operation


def test_the_page_writes_no_markup_and_loads_nothing_from_elsewhere():
    static = files("dgr2.service").joinpath("static")
    js = static.joinpath("page.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink
    for name in ("index.html", "page.js", "page.css"):
        text = static.joinpath(name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name  # no CDN, works offline
        assert "/admin" not in text, name


def test_reasoning_steps_are_sent_with_their_nulls():
    """A strength the model did not write, a slot the request lacks: the documented null, not a missing key,
    while the response's optional parts stay out when absent."""
    from dgr2.service.routes import response_json
    from dgr2.service.schemas import RerankResponse

    req = RerankRequest(history=["H1"], candidates=["A", "B"])
    steps = reasoning_steps("<c1> <r:brand> <h1> <c1> <c9> <r:co> <h4> <v3> <c9>", req, max_history=50)
    assert [(s.item_id, s.strength) for s in steps] == [("A", None), (None, 3)]
    resp = RerankResponse.model_construct(id="x", model="m", model_version="v", decoder="ar", results=[],
                                          reasoning="...", reasoning_steps=steps, passes=None)
    sent = response_json(resp)
    assert "passes" not in sent
    assert sent["reasoning_steps"][0]["strength"] is None and sent["reasoning_steps"][1]["item_id"] is None
    assert sent["reasoning_steps"][1]["evidence"][0]["history_item_id"] is None
