"""Shared fixtures: a synthetic catalog and a tiny random-init model, built once per session."""

from __future__ import annotations

import os

# Triton kernels run interpreted on CPU; this must be set before triton is first imported.
if os.environ.get("DGR2_TEST_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from model.catalog import Catalog
from model.tokenizer import Vocab
from model.transformer import Transformer
from model_store.init import new_model
from recipe.synthetic import SyntheticData, synthetic_data

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
