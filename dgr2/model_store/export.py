"""Copy a checkpoint into another store in shipping form: bf16 weights, item titles dropped.

The shipped AR + diffusion pair must fit 25 MB together; titles are never rendered into prompts,
so dropping them changes nothing the model sees. The copy keeps the source's stage, data hash and
metrics and names the source as its parent; ``evals`` (``dgr2 eval`` JSON objects, e.g. one per
negative-sampling seed) are recorded beside them under ``metrics["eval"]``. Decode settings can be
changed on the way (``decode``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from dgr2.model.catalog import Catalog
from dgr2.model_store.checkpoint import Checkpoint, Provenance, load_checkpoint, save_checkpoint
from dgr2.model_store.registry import ModelStore


def export_checkpoint(src: str | Path, store: ModelStore, name: str, version: str, aliases: Sequence[str],
                      dtype: torch.dtype = torch.bfloat16, strip_titles: bool = True,
                      evals: Sequence[dict] = (), decode: dict | None = None) -> Path:
    """``decode``: decode settings to store in the copy's config (``block_size``, ``threshold``,
    ``answer_threshold``), the defaults every server and eval of it will use."""
    ckpt = load_checkpoint(src)
    if decode:
        ckpt.model.config = ckpt.model.config.replace(**decode)
    m = ckpt.manifest
    metrics = dict(m.get("metrics", {}))
    if evals:
        metrics["eval"] = list(evals)
    prov = Provenance(stage=m.get("stage", "unknown"), parent=f"{Path(src).parent.name}/{Path(src).name}",
                      data_hash=m.get("data_hash"), metrics=metrics)
    return write_shipping_copy(ckpt, store, name, version, aliases, prov, dtype=dtype, strip_titles=strip_titles)


def write_shipping_copy(ckpt: Checkpoint, store: ModelStore, name: str, version: str, aliases: Sequence[str],
                        provenance: Provenance, dtype: torch.dtype = torch.bfloat16,
                        strip_titles: bool = True) -> Path:
    """Save a loaded checkpoint as ``name/version`` of ``store`` (in ``dtype``, titles dropped) and
    point each of ``aliases`` at it."""
    catalog = ckpt.catalog
    if strip_titles:
        catalog = Catalog([dataclasses.replace(it, title=None) for it in catalog.items.values()])
    path = save_checkpoint(store.version_dir(name, version), ckpt.model, ckpt.vocab, catalog, provenance, dtype=dtype)
    for alias in aliases:
        store.set_alias(name, alias, version)
    return path
