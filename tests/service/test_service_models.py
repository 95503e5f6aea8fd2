"""One server, several models: a real server on loopback serving two tiny models built on two different
generated catalogs (``test-gr2``: items S0000..S0059; ``test-toys-gr2``: S0000..S0079).

Each request decodes with the model it names (the default without the field), a batch only ever holds one
model's requests, ``GET /v1/models`` lists both, an unknown name is a 404 that lists the served ones, a
reload acts on the model it names, and a model that fails to load or warm up fails the start.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dgr2.bench.service_load import free_port
from dgr2.model_store.init import init_pair
from dgr2.service import cli
from dgr2.service import runtime as service_runtime
from dgr2.service.server import EXIT_WARM_UP_FAILED

pytestmark = pytest.mark.timeout(180)  # every wait inside is bounded well below this

ONLY_IN_OTHER = "S0070"  # in the second catalog only
VERSIONS = {"test-gr2": {"ar": "init-tiny-s0-ar", "diffusion": "init-tiny-s0-diffusion"},
            "test-toys-gr2": {"ar": "toys-tiny-s1-ar", "diffusion": "toys-tiny-s1-diffusion"}}
TOKEN = "test-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def two_models(store, h, **overrides):
    return h.settings_for(store, models=[h.MODEL, h.OTHER_MODEL], **overrides)


@pytest.fixture(scope="module")
def server(two_models_store, h):
    # the common split is 50/50 (conftest); the second model routes every request to AR
    with h.running(two_models(two_models_store, h, admin_token=TOKEN, ab_splits=f"{h.OTHER_MODEL}: ar=100")) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with server.client() as c:
        yield c


@pytest.mark.parametrize("decoder", ["ar", "diffusion"])
@pytest.mark.parametrize("named", [None, "test-gr2", "test-toys-gr2"])
def test_each_request_decodes_with_its_own_model(client, h, named, decoder):
    model = named or h.MODEL  # no field: the default model, the first of --models
    candidates = ["S0001", "S0002", ONLY_IN_OTHER, "S0003"]
    body = {"history": ["S0010", "S0011"], "candidates": candidates, "decoder": decoder}
    r = client.post("/v1/rerank", json=body if named is None else {**body, "model": named})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model"] == model and got["model_version"] == VERSIONS[model][decoder]
    assert r.headers["x-model-version"] == VERSIONS[model][decoder] and r.headers["x-decoder"] == decoder
    h.assert_permutation(got, candidates)
    # the candidate only the second catalog has is unknown to the first model, and only to it
    assert got["unknown_items"] == ([] if model == h.OTHER_MODEL else [ONLY_IN_OTHER])


def test_the_batch_endpoint_routes_each_item_to_its_model(client, h):
    reqs = [{"candidates": ["S0001", ONLY_IN_OTHER], "model": h.OTHER_MODEL},
            {"candidates": ["S0001", ONLY_IN_OTHER]},
            {"candidates": ["S0001", ONLY_IN_OTHER], "model": "no-such-model"}]
    r = client.post("/v1/rerank/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    first, second, third = r.json()["responses"]
    assert (first["status"], first["response"]["model"], first["response"]["unknown_items"]) == \
        (200, h.OTHER_MODEL, [])
    assert (second["status"], second["response"]["model"], second["response"]["unknown_items"]) == \
        (200, h.MODEL, [ONLY_IN_OTHER])
    assert third["status"] == 404 and third["error"]["code"] == "model_not_found"
    assert third["error"]["param"] == "requests.2.model"


def test_models_lists_every_model(client, h):
    listed = client.get("/v1/models").json()
    assert [m["model"] for m in listed["models"]] == [h.MODEL, h.OTHER_MODEL]
    assert [m["default"] for m in listed["models"]] == [True, False]
    for m in listed["models"]:
        versions = VERSIONS[m["model"]]
        assert m["versions"] == sorted(versions.values())
        assert m["aliases"] == versions
        assert {d["decoder"]: d["version"] for d in m["decoders"]} == versions
        assert {d["catalog_items"] for d in m["decoders"]} == {60 if m["model"] == h.MODEL else 80}
    # the fields single-model clients read describe the default model
    assert listed["model"] == h.MODEL and listed["decoders"] == listed["models"][0]["decoders"]
    assert listed["ready"] and listed["ab_split"] == {"ar": 0.5, "diffusion": 0.5}
    assert [m["ab_split"] for m in listed["models"]] == [{"ar": 0.5, "diffusion": 0.5}, {"ar": 1.0}]
    ready = client.get("/readyz").json()
    assert ready["versions"] == VERSIONS[h.MODEL] and ready["models"] == VERSIONS


def test_each_model_routes_by_its_own_split(client, h):
    """Requests that name no decoder: the second model's own split sends every user to AR, while the same
    users on the default model split between both decoders by the common split."""
    got = {}
    for model in (h.MODEL, h.OTHER_MODEL):
        for batch in (False, True):
            decoders = []
            for u in range(16):
                body = {"user_id": f"user-{u}", "candidates": ["S0001", "S0002"], "model": model}
                if batch:
                    r = client.post("/v1/rerank/batch", json={"requests": [body]})
                    decoders.append(r.json()["responses"][0]["response"]["decoder"])
                else:
                    r = client.post("/v1/rerank", json=body)
                    decoders.append(r.headers["x-decoder"])
                assert r.status_code == 200, r.text
            got[model, batch] = decoders
    assert set(got[h.OTHER_MODEL, False]) == set(got[h.OTHER_MODEL, True]) == {"ar"}
    assert got[h.MODEL, False] == got[h.MODEL, True] and set(got[h.MODEL, False]) == {"ar", "diffusion"}


def test_an_unknown_model_is_a_404_that_lists_the_served_ones(client, server, h):
    before = server.metrics()
    for r in (client.post("/v1/rerank", json={"candidates": ["S0001"], "model": "beauty-gr3"}),
              client.get("/v1/example-request", params={"model": "beauty-gr3"}),
              client.post("/v1/items", json={"ids": ["S0001"], "model": "beauty-gr3"})):
        err = h.assert_error(r, 404, "model_not_found")
        assert err["type"] == "not_found_error" and err["param"] == "model"
        assert "'beauty-gr3'" in err["message"] and f"{h.MODEL}, {h.OTHER_MODEL}" in err["message"]
    after = server.metrics()
    # counted under the default model (no client-chosen label value), before any decoder was chosen
    assert h.metric(after, "dgr2_requests_total", model=h.MODEL, decoder="none", status="404") - \
        h.metric(before, "dgr2_requests_total", model=h.MODEL, decoder="none", status="404") == 1
    assert "beauty-gr3" not in httpx.get(f"{server.url}/metrics", timeout=10).text


def test_example_requests_and_items_come_from_the_named_catalog(client, h):
    default = client.get("/v1/example-request", params={"candidates": 20, "history": 30, "seed": 1}).json()
    assert default["model"] == h.MODEL
    assert all(int(i[1:]) < 60 for i in default["history"] + default["candidates"])
    # 70 items: more than the first catalog holds, fewer than the second's 80
    big = {"candidates": 20, "history": 50}
    assert h.assert_error(client.get("/v1/example-request", params=big), 422)["param"] == "candidates"
    other = client.get("/v1/example-request", params={**big, "model": h.OTHER_MODEL})
    assert other.status_code == 200, other.text
    drawn = other.json()
    assert drawn["model"] == h.OTHER_MODEL and any(int(i[1:]) >= 60 for i in drawn["history"] + drawn["candidates"])
    r = client.post("/v1/rerank", json=drawn)  # accepted as is, by the model it was drawn for
    assert r.status_code == 200 and r.json()["model"] == h.OTHER_MODEL and r.json()["unknown_items"] == []

    ids = ["S0001", ONLY_IN_OTHER]
    assert [i["known"] for i in client.post("/v1/items", json={"ids": ids}).json()["items"]] == [True, False]
    known = client.post("/v1/items", json={"ids": ids, "model": h.OTHER_MODEL}).json()["items"]
    assert [i["known"] for i in known] == [True, True]


def test_metrics_carry_each_model(client, server, h):
    for model in (h.MODEL, h.OTHER_MODEL):
        r = client.post("/v1/rerank", json={"candidates": ["S0001", "S0002"], "model": model, "decoder": "ar"})
        assert r.status_code == 200, r.text
    m = server.metrics()
    for model in (h.MODEL, h.OTHER_MODEL):
        assert h.metric(m, "dgr2_requests_total", model=model, decoder="ar", status="200") >= 1
        assert h.metric(m, "dgr2_batch_size_count", model=model, decoder="ar") >= 1
        assert h.metric(m, "dgr2_model_info", model=model, decoder="ar", version=VERSIONS[model]["ar"]) == 1
        assert h.metric(m, "dgr2_ab_split", model=model, decoder="ar") == (0.5 if model == h.MODEL else 1.0)
        assert f'dgr2_repairs_total{{decoder="diffusion",model="{model}"}}' in m  # exists from the start, per model


def test_a_batch_never_holds_two_models(two_models_store, h, monkeypatch):
    """Requests for both models wait at once, interleaved, while the torch thread is held: each model's
    AR checkpoint decodes only its own requests, in batches of exactly its own three."""
    settings = two_models(two_models_store, h, max_batch_size=3, max_wait_ms=60_000)  # batches fill to 3
    with h.running(settings) as srv:
        calls: list[tuple[str, list[str]]] = []
        release = threading.Event()
        for model in (h.MODEL, h.OTHER_MODEL):
            reranker = srv.rt.model(model).holder.engine("ar").reranker
            real = reranker.rank

            def rank(requests, model=model, real=real):
                calls.append((model, [r.history[0] for r in requests]))  # each request's history is its tag
                if len(calls) == 1:
                    release.wait(60)  # holds the one torch thread: every later batch waits behind it
                return real(requests)

            monkeypatch.setattr(reranker, "rank", rank)

        def post(model: str, tag: str) -> httpx.Response:
            body = {"model": model, "decoder": "ar", "history": [tag], "candidates": ["S0001", "S0002"]}
            return httpx.post(f"{srv.url}/v1/rerank", json=body, timeout=90)

        def depth(model: str) -> int:
            return srv.rt.model(model).batchers["ar"].depth

        a, b = h.MODEL, h.OTHER_MODEL
        try:
            with ThreadPoolExecutor(9) as pool:
                sent = [(a, pool.submit(post, a, f"{a}-{i}")) for i in range(3)]  # a full batch: held
                h.wait_for(lambda: len(calls) == 1, 30, "the first batch to be held")
                # then one at a time, alternating models, each admitted before the next is sent
                for i in range(3):
                    sent.append((a, pool.submit(post, a, f"{a}-{3 + i}")))
                    h.wait_for(lambda i=i: depth(a) == i + 1, 30, f"{a} request {3 + i} queued")
                    sent.append((b, pool.submit(post, b, f"{b}-{i}")))
                    # the third fills the other model's batch, which leaves its queue for the torch thread
                    h.wait_for(lambda i=i: depth(b) == (i + 1) % 3, 30, f"{b} request {i} admitted")
                release.set()
                answers = [(model, f.result(timeout=90)) for model, f in sent]
        finally:
            release.set()
        assert [r.status_code for _, r in answers] == [200] * 9, [r.text for _, r in answers]
        assert [r.json()["model"] for _, r in answers] == [model for model, _ in answers]
        assert [r.headers["x-model-version"] for _, r in answers] == [VERSIONS[model]["ar"] for model, _ in answers]
        batches = sorted((model, sorted(tags)) for model, tags in calls)  # the first three raced each other
        assert batches == [(a, [f"{a}-{i}" for i in range(3)]), (a, [f"{a}-{i}" for i in range(3, 6)]),
                           (b, [f"{b}-{i}" for i in range(3)])]
        m = srv.metrics()
        assert h.metric(m, "dgr2_batch_size_count", model=a, decoder="ar") == 2
        assert h.metric(m, "dgr2_batch_size_sum", model=a, decoder="ar") == 6
        assert h.metric(m, "dgr2_batch_size_count", model=b, decoder="ar") == 1
        assert h.metric(m, "dgr2_batch_size_sum", model=b, decoder="ar") == 3


def test_reload_acts_on_the_model_it_names(tmp_path, catalog, other_catalog, h):
    store = h.make_two_model_store(tmp_path / "store", catalog, other_catalog)
    with h.running(two_models(store, h, admin_token=TOKEN)) as srv:
        reload = f"{srv.url}/admin/reload"
        init_pair(store, h.OTHER_MODEL, other_catalog, "tiny", seed=2, version_prefix="toys")  # moves its aliases
        init_pair(store, h.MODEL, catalog, "tiny", seed=2)  # ... and the default model's, not reloaded below
        r = httpx.post(reload, headers=AUTH, json={"model": h.OTHER_MODEL}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == h.OTHER_MODEL and r.json()["previous"] == VERSIONS[h.OTHER_MODEL]
        assert r.json()["current"] == {"ar": "toys-tiny-s2-ar", "diffusion": "toys-tiny-s2-diffusion"}
        served = {m["model"]: {d["decoder"]: d["version"] for d in m["decoders"]}
                  for m in httpx.get(f"{srv.url}/v1/models", timeout=10).json()["models"]}
        assert served == {h.MODEL: VERSIONS[h.MODEL], h.OTHER_MODEL: r.json()["current"]}
        m = srv.metrics()
        assert h.metric(m, "dgr2_model_info", model=h.MODEL, version="init-tiny-s0-ar") == 1  # untouched
        assert h.metric(m, "dgr2_model_info", model=h.OTHER_MODEL, version="toys-tiny-s1-ar") == 0
        assert h.metric(m, "dgr2_model_info", model=h.OTHER_MODEL, version="toys-tiny-s2-ar") == 1

        # a ref is looked up in the named model's versions; an unknown model is a 404 and changes nothing
        err = h.assert_error(httpx.post(reload, headers=AUTH, json={"model": h.OTHER_MODEL,
                                                                     "ar_ref": "init-tiny-s2-ar"}, timeout=60), 422)
        assert err["param"] == "ar_ref"
        err = h.assert_error(httpx.post(reload, headers=AUTH, json={"model": "nope"}, timeout=60), 404,
                             "model_not_found")
        assert h.OTHER_MODEL in err["message"]
        r = httpx.post(reload, headers=AUTH, timeout=60)  # no body: the default model
        assert r.status_code == 200 and r.json()["model"] == h.MODEL, r.text
        assert r.json()["current"] == {"ar": "init-tiny-s2-ar", "diffusion": "init-tiny-s2-diffusion"}


# ----------------------------------------------------------------------------- settings and start-up
def _serve(store, h, *flags: str) -> int:
    parser = cli_parser()
    args = ["--store", str(store.root), "--port", str(free_port()), "--torch-threads", "1",
            "--log-level", "critical", *flags]
    return cli.run(parser.parse_args(args))


def cli_parser():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser


def test_settings_name_the_default_and_refuse_one_outside_the_list(two_models_store, h, capsys):
    assert _serve(two_models_store, h, "--models", f"{h.MODEL},{h.MODEL}") == 2
    assert f"--models: Value error, names {h.MODEL} more than once" in capsys.readouterr().err
    assert _serve(two_models_store, h, "--models", h.OTHER_MODEL, "--model", h.MODEL) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dgr2 serve: error: --model {h.MODEL} (DGR2_MODEL, the default model) is not among --models "
                   f"{h.OTHER_MODEL} (DGR2_MODELS): list it there, or leave it unset"]
    from dgr2.service.settings import Settings

    assert Settings(models=f"{h.OTHER_MODEL},{h.MODEL}").model == h.OTHER_MODEL  # the first listed
    assert Settings(models=f"{h.OTHER_MODEL},{h.MODEL}", model=h.MODEL).served_models == [h.OTHER_MODEL, h.MODEL]
    assert Settings().served_models == [Settings().model]  # one model, as before


def test_per_model_splits_parse_and_name_served_models_only(two_models_store, h, capsys):
    from dgr2.service.settings import Settings

    s = Settings(models=f"{h.MODEL},{h.OTHER_MODEL}", ab_split="diffusion=90,ar=10",
                 ab_splits=f" {h.OTHER_MODEL}: ar=1 ; ")
    assert s.split_of(h.OTHER_MODEL) == {"ar": 1.0} and s.split_of(h.MODEL) == {"diffusion": 90.0, "ar": 10.0}
    assert _serve(two_models_store, h, "--models", h.MODEL, "--ab-splits", f"{h.OTHER_MODEL}: ar=100") == 2
    assert f"--ab-splits (DGR2_AB_SPLITS) names {h.OTHER_MODEL}, not served; served: {h.MODEL}" in \
        capsys.readouterr().err
    assert _serve(two_models_store, h, "--ab-splits", "ar=100") == 2
    assert "'ar=100' is not MODEL:DECODER=WEIGHT" in capsys.readouterr().err
    assert _serve(two_models_store, h, "--ab-splits", f"{h.MODEL}: beam=1") == 2
    assert "unknown decoder 'beam'" in capsys.readouterr().err


def test_a_second_model_that_fails_to_load_fails_the_start(tmp_path, catalog, other_catalog, h):
    store = h.make_two_model_store(tmp_path / "store", catalog, other_catalog)
    weights = store.resolve(h.OTHER_MODEL, "diffusion") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # truncated
    assert _serve(store, h, "--models", f"{h.MODEL},{h.OTHER_MODEL}") == 3  # uvicorn's start-up failure


def test_a_second_model_that_fails_to_warm_up_ends_the_process(two_models_store, h, monkeypatch, capsys):
    real = service_runtime.warm_up

    def failing(models):
        if models.name == h.OTHER_MODEL:
            raise RuntimeError("planted warm-up failure")
        real(models)

    monkeypatch.setattr(service_runtime, "warm_up", failing)
    assert _serve(two_models_store, h, "--models", f"{h.MODEL},{h.OTHER_MODEL}") == EXIT_WARM_UP_FAILED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dgr2 serve: error: warm-up of {h.OTHER_MODEL} ") and \
        last.endswith("RuntimeError: planted warm-up failure"), last
