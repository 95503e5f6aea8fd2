"""Faults: damaged checkpoints are refused at start (clear error, non-zero exit) and on /admin/reload
(the old models keep serving); SIGTERM answers every admitted request and refuses new ones with 503, a
drain that runs out and a second SIGTERM answer what is still queued with 503; a decoder exception fails
only its own batch. Where it matters when something was answered, decodes are held (in flight) until
the test lets them go, and the test asserts what was answered while they were held.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dgr2.model_store.init import init_pair
from dgr2.service import cli
from dgr2.service.server import EXIT_WARM_UP_FAILED

pytestmark = pytest.mark.timeout(180)

TOKEN = "faults-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _rehash(ckpt: Path, name: str) -> None:
    """Make the manifest agree with a file again (what a careless or malicious edit would do)."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    manifest["sizes"][name] = (ckpt / name).stat().st_size
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-64])


def _edit(path: Path) -> None:  # e.g. 2 layers -> 12: the weights no longer fit
    path.write_text(path.read_text().replace('"num_hidden_layers": ', '"num_hidden_layers": 1'))


# kind -> (damage, words the error must contain: the file and what is wrong with it)
FAULTS = {
    "truncated weights": (lambda d: _truncate(d / "model.safetensors"), ("model.safetensors", "truncated")),
    "corrupted weights (one bit)": (lambda d: _flip(d / "model.safetensors"), ("model.safetensors", "sha256")),
    "tampered config": (lambda d: _edit(d / "config.json"), ("config.json", "sha256")),
    "missing tokenizer": (lambda d: (d / "tokenizer.json").unlink(), ("tokenizer.json", "missing")),
    "unreadable manifest": (lambda d: (d / "manifest.json").write_text("{not json"), ("manifest.json", "unreadable")),
    "garbage weights, manifest re-hashed": (
        lambda d: ((d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"),
                   _rehash(d, "model.safetensors")),
        ("cannot be loaded",)),
}


def _damaged_store(root: Path, catalog, h, kind: str, seed: int = 0):
    store = h.make_store(root, catalog, seeds=(seed,))
    damage, _ = FAULTS[kind]
    damage(store.resolve(h.MODEL, "diffusion"))
    return store


# ----------------------------------------------------------------------------- refused at start
@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_a_damaged_checkpoint_fails_the_start(kind, tmp_path, catalog, h, capfd):
    store = _damaged_store(tmp_path / "store", catalog, h, kind)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = ["--store", str(store.root), "--model", h.MODEL, "--port", "0", "--log-level", "error"]
    assert cli.run(parser.parse_args(args)) != 0
    err = capfd.readouterr().err
    version = store.resolve(h.MODEL, "diffusion").name
    assert all(word in err for word in FAULTS[kind][1]) and version in err, err[-2000:]


def test_a_damaged_checkpoint_makes_the_process_exit_non_zero(tmp_path, catalog, h, serve_process, figures):
    store = _damaged_store(tmp_path / "store", catalog, h, "corrupted weights (one bit)")
    srv = serve_process(store.root)
    code = srv.proc.wait(timeout=60)
    out = srv.output()
    last = [line for line in out.splitlines() if "CheckpointError" in line][-1]
    assert code != 0 and "model.safetensors" in last and "does not match its sha256" in last, out[-3000:]
    assert "the service did not start" in out
    figures.update(exit_code=code, error=last.split("CheckpointError: ")[-1][:160])


def test_a_failed_warm_up_ends_the_process_with_the_error_on_stderr(tmp_path, catalog, h, serve_process):
    """Loaded and verified, but the first decode fails: the process exits, never a server stuck at 503."""
    store = h.make_store(tmp_path / "store", catalog, seeds=(0,))
    srv = serve_process(store.root, fail_warm_up=True)
    code = srv.proc.wait(timeout=120)
    out = srv.output()
    assert code == EXIT_WARM_UP_FAILED, out[-3000:]
    assert "Traceback" in out and "RuntimeError: planted warm-up failure" in out  # the server log has it all
    last = out.strip().splitlines()[-1]
    assert last.startswith("dgr2 serve: error: warm-up of") and last.endswith("planted warm-up failure"), last


# ----------------------------------------------------------------------------- refused on reload
@pytest.fixture(scope="module")
def reload_srv(tmp_path_factory, catalog, h):
    store = h.make_store(tmp_path_factory.mktemp("reload-store"), catalog, seeds=(0,))
    with h.running(h.settings_for(store, admin_token=TOKEN)) as srv:
        srv.store = store
        yield srv


def _served(url: str) -> dict[str, str]:
    out = {}
    for decoder in ("ar", "diffusion"):
        r = httpx.post(f"{url}/v1/rerank", json={"candidates": ["S0001", "S0002"], "decoder": decoder}, timeout=30)
        assert r.status_code == 200, r.text
        out[decoder] = r.headers["x-model-version"]
    return out


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_a_damaged_checkpoint_is_refused_on_reload_and_the_old_one_keeps_serving(kind, reload_srv, catalog, h):
    srv, store = reload_srv, reload_srv.store
    before = _served(srv.url)
    seed = 100 + sorted(FAULTS).index(kind)
    init_pair(store, h.MODEL, catalog, "tiny", seed=seed)  # moves the aliases to the new pair ...
    FAULTS[kind][0](store.resolve(h.MODEL, "diffusion"))  # ... whose diffusion checkpoint is damaged
    r = httpx.post(f"{srv.url}/admin/reload", headers=AUTH, timeout=60)
    err = h.assert_error(r, 500, "reload_failed")
    assert all(word in err["message"] for word in FAULTS[kind][1]), err
    assert str(store.root) not in err["message"]
    assert _served(srv.url) == before  # nothing was swapped, not even the intact AR half
    assert httpx.get(f"{srv.url}/readyz", timeout=5).status_code == 200


# ----------------------------------------------------------------------------- SIGTERM and the drain
def _held_server(store, serve_process, tmp_path, *flags: str):
    """A ``dgr2 serve`` process, batch 1, whose decodes are held (in flight) until the test lets them go."""
    hold = tmp_path / "hold"
    srv = serve_process(store.root, "--max-batch-size", "1", "--max-wait-ms", "0", "--max-new-tokens", "16",
                        *flags, hold=hold)
    srv.wait_ready()
    hold.touch()  # from now on every decode waits while this file exists
    return srv, hold


@contextmanager
def _let_go_at_the_end(hold: Path):
    """Whatever happens in the block, the held decodes go on when it ends (so a failing test ends soon)."""
    try:
        yield
    finally:
        hold.unlink(missing_ok=True)


def _send(url: str, body: dict):
    """POST on a new connection: the response, or ``"lost: <error>"`` when the connection broke."""
    try:
        return httpx.post(f"{url}/v1/rerank", json=body, timeout=90, headers={"connection": "close"})
    except httpx.TransportError as e:
        return f"lost: {type(e).__name__}"


def _admit(pool, srv, h, hold, n: int) -> list:
    """``n`` AR requests: the first held in decode, the others queued behind it (in that order)."""
    def send(i: int):
        return pool.submit(_send, srv.url, {"candidates": h.CANDIDATES[: 2 + i], "decoder": "ar"})

    futures = [send(0)]
    h.wait_for(lambda: Path(f"{hold}.held").exists(), 30, "the first decode to be held")
    futures += [send(i) for i in range(1, n)]

    def queued() -> float:
        return h.metric(h.parse_metrics(httpx.get(f"{srv.url}/metrics", timeout=5).text), "dgr2_queue_depth")

    h.wait_for(lambda: queued() == n - 1, 30, f"{n - 1} requests queued behind the held one")
    return futures


def _draining(srv) -> bool:
    return httpx.get(f"{srv.url}/readyz", timeout=5).status_code == 503


def _outcome(r) -> str:
    """``"200"``, ``"503 draining"`` (status and error code), or what else came back."""
    if isinstance(r, str):
        return r
    try:
        code = r.json().get("error", {}).get("code", "")
    except ValueError:
        code = f"(not JSON: {r.text[:40]!r})"
    return f"{r.status_code} {code}".strip()


def test_sigterm_answers_every_admitted_request_and_refuses_new_ones(shared_store, serve_process, h, tmp_path,
                                                                      figures):
    """SIGTERM with one request decoding and seven queued: while they are all still held, new requests (a new
    connection each) get 503 ``draining``; once let go, every admitted request is answered 200 and the
    process exits by SIGTERM."""
    n, late = 8, 3
    srv, hold = _held_server(shared_store, serve_process, tmp_path)
    with ThreadPoolExecutor(n) as pool, _let_go_at_the_end(hold):
        admitted = _admit(pool, srv, h, hold, n)
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        h.wait_for(lambda: _draining(srv), 30, "the drain to begin")
        refused = [_send(srv.url, {"candidates": h.CANDIDATES[:3], "decoder": "ar"}) for _ in range(late)]
        assert not any(f.done() for f in admitted)  # refused while every admitted request was still held
        hold.unlink()
        answered = [f.result(timeout=90) for f in admitted]
    code = srv.proc.wait(timeout=60)
    figures.update(admitted=n, answered_200=sum(_outcome(r) == "200" for r in answered),
                   refused_503=sum(_outcome(r) == "503 draining" for r in refused), exit_code=code,
                   signal_to_exit_s=round(time.monotonic() - signalled, 2))
    assert [_outcome(r) for r in refused] == ["503 draining"] * late, srv.output()[-3000:]
    for r in refused:
        h.assert_error(r, 503, "draining")
    assert [_outcome(r) for r in answered] == ["200"] * n, srv.output()[-3000:]
    for i, r in enumerate(answered):
        h.assert_permutation(r.json(), h.CANDIDATES[: 2 + i])
    assert code == -signal.SIGTERM, srv.output()[-3000:]  # uvicorn re-raises the signal once it has stopped


def test_a_drain_that_runs_out_answers_the_queued_requests_503(shared_store, serve_process, h, tmp_path, figures):
    """``--drain-timeout-s 1`` with a decode that does not finish in time: the requests still queued get 503
    ``draining`` when the drain runs out (the held decode still in flight), the one decoding gets an answer
    (not a broken connection) once it ends, and the process exits by SIGTERM."""
    n = 4
    srv, hold = _held_server(shared_store, serve_process, tmp_path, "--drain-timeout-s", "1")
    with ThreadPoolExecutor(n) as pool, _let_go_at_the_end(hold):
        admitted = _admit(pool, srv, h, hold, n)
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # the held decode never ends by itself: the drain runs out, and the queued requests must be answered
        h.wait_for(lambda: all(f.done() for f in admitted[1:]), 60, "the queued requests to be answered")
        queued_outcomes = [_outcome(f.result()) for f in admitted[1:]]
        hold.unlink()
        outcomes = [_outcome(f.result(timeout=90)) for f in admitted]
    code = srv.proc.wait(timeout=60)
    figures.update(admitted=n, outcomes=dict(Counter(outcomes)), exit_code=code,
                   signal_to_exit_s=round(time.monotonic() - signalled, 2))
    assert queued_outcomes == ["503 draining"] * (n - 1), (queued_outcomes, srv.output()[-3000:])
    assert outcomes[0] in ("200", "503 draining"), (outcomes, srv.output()[-3000:])  # the one that was decoding
    assert "drain timed out" in srv.output()
    assert code == -signal.SIGTERM, srv.output()[-3000:]


def test_a_second_sigterm_abandons_the_drain(shared_store, serve_process, h, tmp_path, figures):
    """A second SIGTERM during the drain stops waiting for admitted requests: what is still queued gets 503
    ``draining`` at once (the held decode still in flight), the one decoding gets an answer once it ends,
    and the process exits by SIGTERM."""
    n = 4
    srv, hold = _held_server(shared_store, serve_process, tmp_path)
    with ThreadPoolExecutor(n) as pool, _let_go_at_the_end(hold):
        admitted = _admit(pool, srv, h, hold, n)
        srv.proc.send_signal(signal.SIGTERM)
        h.wait_for(lambda: _draining(srv), 30, "the drain to begin")
        srv.proc.send_signal(signal.SIGTERM)
        h.wait_for(lambda: all(f.done() for f in admitted[1:]), 60, "the queued requests to be answered")
        queued_outcomes = [_outcome(f.result()) for f in admitted[1:]]
        hold.unlink()
        outcomes = [_outcome(f.result(timeout=90)) for f in admitted]
    code = srv.proc.wait(timeout=60)
    figures.update(admitted=n, outcomes=dict(Counter(outcomes)), exit_code=code)
    assert queued_outcomes == ["503 draining"] * (n - 1), (queued_outcomes, srv.output()[-3000:])
    assert outcomes[0] in ("200", "503 draining"), (outcomes, srv.output()[-3000:])
    assert code == -signal.SIGTERM, srv.output()[-3000:]


# ----------------------------------------------------------------------------- a decoder exception
def test_a_decoder_exception_fails_only_its_batch(shared_store, h, monkeypatch, figures):
    n = 12
    with h.running(h.settings_for(shared_store, max_batch_size=4, max_wait_ms=0)) as srv:
        reranker = srv.rt.models.engine("ar").reranker
        real = reranker.rank
        batches: list[list[str]] = []

        def flaky(requests):
            time.sleep(0.3)  # so that the others queue up behind and form full batches
            markers = [r.candidates[-1]["id"] for r in requests]
            batches.append(markers)
            if len(batches) == 2:
                raise RuntimeError("device-side assert in /opt/secret/kernels/attention.py:42")
            return real(requests)

        monkeypatch.setattr(reranker, "rank", flaky)
        bodies = [{"candidates": ["S0001", "S0002", {"id": f"REQ-{i}"}], "decoder": "ar"} for i in range(n)]
        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(lambda b: httpx.post(f"{srv.url}/v1/rerank", json=b, timeout=60), bodies))
        failed_batch = set(batches[1])
        for body, r in zip(bodies, responses, strict=True):
            if body["candidates"][-1]["id"] in failed_batch:
                err = h.assert_error(r, 500, "decode_failed")
                assert "secret" not in r.text and "attention" not in r.text and "assert" not in err["message"]
            else:
                assert r.status_code == 200, r.text
                h.assert_permutation(r.json(), body["candidates"])
        codes = Counter(r.status_code for r in responses)
        assert codes[500] == len(failed_batch) >= 1 and codes[200] == n - len(failed_batch)
        assert len(batches) >= 3  # batches after the failed one were decoded
        after = httpx.post(f"{srv.url}/v1/rerank", json=bodies[0], timeout=30)
        assert after.status_code == 200 and httpx.get(f"{srv.url}/readyz", timeout=5).status_code == 200
        figures.update(sent=n, batches=[len(b) for b in batches], failed=codes[500], answered_200=codes[200])
