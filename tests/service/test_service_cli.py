"""``dgr2 serve`` as a real process: flags reach the settings, and SIGTERM drains before exiting."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dgr2.bench.service_load import free_port
from dgr2.cli import main
from dgr2.service import cli
from dgr2.service.settings import Settings

pytestmark = pytest.mark.timeout(120)  # every wait inside is bounded well below this
ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_drains_admitted_requests(shared_store, h, tmp_path):
    port, n = free_port(), 6
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGR2_")}
    env["DGR2_MAX_NEW_TOKENS"] = "128"  # env is the default ...
    cmd = [sys.executable, "-c", "import sys, dgr2.cli; sys.exit(dgr2.cli.main())", "serve",
           "--store", str(shared_store.root), "--model", h.MODEL, "--port", str(port),  # ... flags override it
           "--max-batch-size", "1", "--max-wait-ms", "0", "--torch-threads", "1", "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        h.wait_for(lambda: proc.poll() is None and httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
                   60, "dgr2 serve ready")
        models = httpx.get(f"{url}/v1/models", timeout=5).json()
        assert {d["max_new_tokens"] for d in models["decoders"]} == {128}
        body = {"candidates": h.CANDIDATES, "decoder": "diffusion"}
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(httpx.post, f"{url}/v1/rerank", json=body, timeout=60) for _ in range(n)]

            def admitted() -> bool:  # queued + decoded + the one decoding
                m = h.parse_metrics(httpx.get(f"{url}/metrics", timeout=5).text)
                done = h.metric(m, "dgr2_batch_size_count", decoder="diffusion")
                return h.metric(m, "dgr2_queue_depth", decoder="diffusion") + done >= n - 1

            h.wait_for(admitted, 30, "all requests admitted")
            proc.send_signal(signal.SIGTERM)
            responses = [f.result(timeout=60) for f in futures]
        assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses]
        for r in responses:
            h.assert_permutation(r.json(), h.CANDIDATES)
        proc.wait(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser


def test_cli_flags_mirror_settings(capsys):
    parser = _parser()
    assert {a.dest for a in parser._actions} - {"help"} == set(Settings.model_fields)
    assert cli.run(parser.parse_args(["--ab-split", "beam=1"])) == 2
    assert "--ab-split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0 and "--max-batch-size" in capsys.readouterr().out


def test_cli_exits_non_zero_when_a_checkpoint_is_bad(tmp_path, catalog, h):
    store = h.make_store(tmp_path / "store", catalog)
    (store.resolve(h.MODEL, "diffusion") / "tokenizer.json").write_text("{}")
    args = ["--store", str(store.root), "--model", h.MODEL, "--port", str(free_port()), "--log-level", "critical"]
    assert cli.run(_parser().parse_args(args)) != 0
