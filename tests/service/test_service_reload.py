"""/admin/reload: bearer auth, a verified swap to new checkpoints, and a failed reload that changes nothing."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)  # every wait inside is bounded well below this

TOKEN = "test-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def store(tmp_path, catalog, h):
    return h.make_store(tmp_path / "store", catalog, seeds=(0,))


def _version(url: str, decoder: str) -> str:
    r = httpx.post(f"{url}/v1/rerank", json={"candidates": ["S0001", "S0002"], "decoder": decoder}, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-model-version"]


def _versions(url: str) -> tuple[str, str]:
    return _version(url, "ar"), _version(url, "diffusion")


def test_reload_swaps_and_a_failed_reload_keeps_the_old(store, catalog, h):
    from dgr2.model_store.init import init_pair

    with h.running(h.settings_for(store, admin_token=TOKEN)) as srv:
        reload = f"{srv.url}/admin/reload"
        h.assert_error(httpx.post(reload, timeout=10), 401, "invalid_token")
        h.assert_error(httpx.post(reload, headers={"authorization": "Bearer nope"}, timeout=10), 401)
        h.assert_error(httpx.post(reload, headers={"authorization": TOKEN}, timeout=10), 401)  # not "Bearer"
        assert _version(srv.url, "ar") == "init-tiny-s0-ar"

        init_pair(store, h.MODEL, catalog, "tiny", seed=1)  # moves the aliases to the s1 pair
        r = httpx.post(reload, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["previous"] == {"ar": "init-tiny-s0-ar", "diffusion": "init-tiny-s0-diffusion"}
        assert r.json()["current"] == {"ar": "init-tiny-s1-ar", "diffusion": "init-tiny-s1-diffusion"}
        assert _versions(srv.url) == ("init-tiny-s1-ar", "init-tiny-s1-diffusion")
        m = srv.metrics()
        assert h.metric(m, "dgr2_model_info", decoder="ar", version="init-tiny-s1-ar") == 1
        assert h.metric(m, "dgr2_model_info", version="init-tiny-s0-ar") == 0  # the old series is gone

        # a tampered checkpoint: verification refuses it, the s1 pair keeps serving
        init_pair(store, h.MODEL, catalog, "tiny", seed=2)
        weights = store.version_dir(h.MODEL, "init-tiny-s2-diffusion") / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-64])  # truncated
        err = h.assert_error(httpx.post(reload, headers=AUTH, timeout=60), 500, "reload_failed")
        assert "model.safetensors" in err["message"] and "init-tiny-s1-ar" in err["message"]
        assert str(store.root) not in err["message"]
        assert _versions(srv.url) == ("init-tiny-s1-ar", "init-tiny-s1-diffusion")
        assert httpx.get(f"{srv.url}/readyz", timeout=5).status_code == 200

        # explicit refs in the body; an unknown one is the caller's error (422) and changes nothing
        refs = {"ar_ref": "init-tiny-s0-ar", "diffusion_ref": "init-tiny-s0-diffusion"}
        r = httpx.post(reload, headers=AUTH, json=refs, timeout=60)
        assert r.status_code == 200 and r.json()["current"]["ar"] == "init-tiny-s0-ar", r.text
        err = h.assert_error(httpx.post(reload, headers=AUTH, json={"ar_ref": "no-such-version"}, timeout=60), 422)
        assert err["param"] == "ar_ref" and "no-such-version" in err["message"]
        h.assert_error(httpx.post(reload, headers=AUTH, json={"ar_ref": "x", "colour": 1}, timeout=60), 422)
        assert _version(srv.url, "ar") == "init-tiny-s0-ar"


def test_a_tampered_checkpoint_fails_the_start(store, h):
    weights = store.resolve(h.MODEL, "ar") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="failed to start"), h.running(h.settings_for(store)):
        pass
