"""Put a trained model into the model store: a new version folder, its manifest, and an alias."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dgr2.model.catalog import Catalog
from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer
from dgr2.model_store import DEFAULT_MODEL, Provenance, open_store, save_checkpoint


def publish(root: str | None, name: str | None, version: str, aliases: Sequence[str], model: Transformer,
            vocab: Vocab, catalog: Catalog, provenance: Provenance, decoder: str = "ar",
            dtype: torch.dtype = torch.float32) -> Path:
    """Save ``model`` as ``<name>/<version>`` for ``decoder`` (replacing an earlier save of that
    version) and point each of ``aliases`` at it."""
    store = open_store(root)
    name = name or DEFAULT_MODEL
    model.config = model.config.replace(decoder=decoder)
    path = save_checkpoint(store.version_dir(name, version), model, vocab, catalog, provenance, dtype=dtype)
    for alias in aliases:
        store.set_alias(name, alias, version)
    return path
