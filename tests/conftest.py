"""Shared fixtures: a synthetic catalog and a tiny random-init model, built once per session; the rule
for what a test needs from outside the repository (``need``); the ``gpu`` marker's skip."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from types import ModuleType, SimpleNamespace

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
INSTALL = "make install"  # installs the locked runtime and test set into .venv


def under_ci() -> bool:
    """``CI`` set (to anything but empty, 0 or false): the CI entry point (.ci/run) installs everything."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def _missing(what: str, install: str) -> None:
    """The one rule for a missing dependency: under CI the test fails (a broken install must not pass
    as a skip); on a developer machine it skips, naming the command that installs it."""
    if under_ci():
        pytest.fail(f"{what} is not installed ({install}); CI must install it", pytrace=False)
    pytest.skip(f"{what} is not installed on this machine; install it with: {install}")


def need_module(name: str, install: str = INSTALL) -> ModuleType:
    """The imported module ``name`` (a package the test extra installs), else fail under CI / skip."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"the Python package {name!r}", install)
        raise  # not reached: _missing raises


def need_binary(name: str, install: str = INSTALL) -> str:
    """The path of command ``name``, from this interpreter's bin folder (the pip-installed tools) or
    PATH, else fail under CI / skip."""
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        _missing(f"the command {name!r}", install)
    return path


@pytest.fixture(scope="session")
def need() -> SimpleNamespace:
    """``need.module(name)`` / ``need.binary(name, install)``: the helpers above, for test folders that
    cannot import this conftest."""
    return SimpleNamespace(module=need_module, binary=need_binary)


def pytest_collection_modifyitems(config, items) -> None:
    """``gpu`` tests run only with ``DGR2_TEST_DEVICE=cuda`` (``bash scripts/gpu_check.sh`` sets it);
    they are the only tests a CPU run skips."""
    if os.environ.get("DGR2_TEST_DEVICE", "cpu") == "cuda":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: DGR2_TEST_DEVICE=cuda (bash scripts/gpu_check.sh)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


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


@pytest.fixture()
def damage_rank_two(monkeypatch):
    """``apply(decoder, vocab)``: that decoder's answers come back invalid, rank 2 a copy of rank 1
    (what the guard must repair), for the rest of the test."""
    from dgr2.model import engine

    def apply(decoder: str, vocab) -> None:
        real = engine.DECODE_FUNCTIONS[decoder]

        def damaged(*args, **kw):
            outs = real(*args, **kw)
            for o in outs:
                toks = list(o.tokens)
                start = toks.index(vocab.answer)
                if vocab.slot_of(toks[start + 2]) is not None:
                    toks[start + 2] = toks[start + 1]
                o.tokens = toks
            return outs

        monkeypatch.setitem(engine.DECODE_FUNCTIONS, decoder, damaged)

    return apply


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-model decodes: they gain nothing from more, and on a busy
    2-core box the OpenMP team of a second thread makes each pass many times slower; restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
