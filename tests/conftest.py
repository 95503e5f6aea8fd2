"""Shared fixtures: a synthetic catalog and a tiny random-init model, built once per session."""

from __future__ import annotations

import os
import subprocess

# Triton kernels run interpreted on CPU; this must be set before triton is first imported.
if os.environ.get("DGR2_TEST_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import yaml

from dgr2.bench.service_load import free_port
from dgr2.model.catalog import Catalog
from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer
from dgr2.model_store.init import new_model
from dgr2.recipe.synthetic import SyntheticData, synthetic_data

DATA_DIR_ENV = "DGR2_DATA_DIR"


@pytest.fixture(scope="session")
def synth() -> SyntheticData:
    return synthetic_data()


@pytest.fixture(scope="session")
def catalog(synth) -> Catalog:
    return synth.catalog


@pytest.fixture(scope="session")
def tiny(catalog) -> tuple[Transformer, Vocab]:
    return new_model(catalog, "tiny", seed=0)


@pytest.fixture(scope="session")
def beauty_dir():
    """The Amazon Beauty folder, or a clean skip when it is not on this machine."""
    path = os.environ.get(DATA_DIR_ENV) or os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                         "data", "amazon-beauty")
    if not os.path.isfile(os.path.join(path, "Beauty.txt")):
        pytest.skip(f"Amazon Beauty data not found (set {DATA_DIR_ENV})")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture()
def launch_prometheus(tmp_path):
    """launch(binary, config) -> base url: a real Prometheus server with ``config`` (a dict, written as
    its YAML file) on a free loopback port, its log in ``tmp_path``; stopped at teardown."""
    procs: list[subprocess.Popen] = []

    def launch(binary: str, config: dict) -> str:
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process below
        procs.append(subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()
        return f"http://127.0.0.1:{port}"

    yield launch
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
