"""The product as a new user gets it: the installed ``dgr2`` command serves the shipped checkpoints.

Everything here runs the real thing: the console script the install put next to this interpreter, the
shipped model store inside the package, a loopback port, and full-size requests (100 candidates).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from dgr2.bench.service_load import free_port
from dgr2.model.config import DECODERS
from dgr2.model_store import DEFAULT_MODEL, load_checkpoint, open_store

pytestmark = pytest.mark.timeout(400)
ROOT = Path(__file__).resolve().parents[2]
DGR2 = Path(sys.executable).with_name("dgr2")  # the console script `make install` / `pip install` created


def _shipped_versions() -> list[str]:
    store = open_store()
    return [f"{name}:{version}" for name in store.names() for version in store.versions(name)]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DGR2_")}


def _request(n_history: int = 20, n_candidates: int = 100, seed: int = 0) -> dict:
    """A full-size request built from the served model's own catalog (real item ids)."""
    catalog = load_checkpoint(open_store().resolve(DEFAULT_MODEL, "ar")).catalog
    ids = random.Random(seed).sample(sorted(catalog.items), n_history + n_candidates)
    return {"user_id": "shipped-models-test", "history": ids[:n_history], "candidates": ids[n_history:]}


def test_the_console_script_is_installed():
    assert DGR2.is_file(), f"{DGR2} is missing: install the project (`make install` or `pip install .`)"


@pytest.mark.parametrize("ref", _shipped_versions())
def test_every_shipped_checkpoint_verifies(ref, tmp_path):
    out = subprocess.run([str(DGR2), "model", "verify", ref], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)  # the verified manifest


@pytest.mark.slow
def test_dgr2_serve_ranks_full_requests_with_each_decoder(tmp_path, h):
    """`make serve`'s command on the shipped store, started outside the repository."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(DGR2), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"dgr2 serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200

        h.wait_for(ready, 240, "the shipped models to load and warm up", interval=0.5)
        body = _request()
        for decoder in DECODERS:
            r = httpx.post(f"{url}/v1/rerank", json={**body, "decoder": decoder}, timeout=120)
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["decoder"] == decoder and r.headers["x-decoder"] == decoder
            h.assert_permutation(got, body["candidates"])
            assert got["usage"]["generated_tokens"] > len(body["candidates"])  # a trace, then the answer
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode in (0, -15), log.read_text()[-4000:]


_ONE_PROCESS = """
import json, sys
import torch
import kernels as hf_kernels                       # Hugging Face's package, a dependency of transformers
import transformers
from dgr2.kernels import block_attention           # ours, by its own name
from dgr2.model.decoding import DecodeConfig
from dgr2.model.engine import RankRequest, Reranker
from dgr2.model_store import DEFAULT_MODEL, load_checkpoint, open_store

assert "site-packages" in hf_kernels.__file__, hf_kernels.__file__
assert callable(block_attention), type(block_attention)
req = json.loads(sys.argv[1])
out = {}
for decoder in ("ar", "diffusion"):
    path = open_store().resolve(DEFAULT_MODEL, decoder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ckpt = load_checkpoint(path)
    ids = torch.randint(0, len(ckpt.vocab), (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (hf(input_ids=ids).logits - ckpt.model.float()(ids)).abs().max().item()
    engine = Reranker(ckpt.model, ckpt.vocab, ckpt.catalog, decoder=decoder,
                      decode=DecodeConfig.for_model(ckpt.config, max_new_tokens=1024))
    result = engine.rank([RankRequest(history=req["history"], candidates=req["candidates"])])[0]
    out[decoder] = {"gap": gap, "order": result.order}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_hf_kernels_and_ours_in_one_process(tmp_path, need):
    """transformers needs PyPI's `kernels`; ours is `dgr2.kernels`: both load, from the repository root too."""
    need.module("kernels"), need.module("transformers")
    body = _request(seed=1)
    for cwd in (ROOT, tmp_path):  # the repository root is on sys.path for `python -c`: nothing there may shadow
        out = subprocess.run([sys.executable, "-c", _ONE_PROCESS, json.dumps(body)], cwd=cwd, env=_env(),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        for decoder, got in json.loads(out.stdout.strip().splitlines()[-1]).items():
            assert got["gap"] < 1e-3, decoder  # transformers' Qwen3 and our network: the same logits
            assert sorted(got["order"]) == list(range(len(body["candidates"]))), decoder
