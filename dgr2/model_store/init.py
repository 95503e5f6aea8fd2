"""Random-init checkpoint pairs, so the rest of the system can be built before trained weights exist."""

from __future__ import annotations

from pathlib import Path

import torch

from dgr2.model.catalog import Catalog
from dgr2.model.config import DECODERS, preset
from dgr2.model.tokenizer import Vocab, build_tokenizer
from dgr2.model.transformer import Transformer
from dgr2.model_store.checkpoint import Provenance, save_checkpoint
from dgr2.model_store.registry import ModelStore


def new_model(catalog: Catalog, preset_name: str, seed: int = 0, co_strength: bool = True,
              **overrides) -> tuple[Transformer, Vocab]:
    """A freshly initialised model whose vocabulary covers ``catalog`` (``co_strength=False``: the
    v3 vocabulary, without the <coN> tokens)."""
    vocab = Vocab(build_tokenizer(catalog, co_strength))
    config = preset(preset_name, vocab_size=len(vocab), mask_token_id=vocab.mask, pad_token_id=vocab.pad,
                    eos_token_id=vocab.eos, **overrides)
    torch.manual_seed(seed)
    return Transformer(config).eval(), vocab


def init_pair(store: ModelStore, name: str, catalog: Catalog, preset_name: str = "tiny", seed: int = 0,
              version_prefix: str = "init") -> dict[str, Path]:
    """Write one random-init model as two versions (decoder ``ar`` and ``diffusion``) and alias them."""
    model, vocab = new_model(catalog, preset_name, seed)
    paths = {}
    for decoder in DECODERS:
        model.config = model.config.replace(decoder=decoder)
        version = f"{version_prefix}-{preset_name}-s{seed}-{decoder}"
        paths[decoder] = save_checkpoint(store.version_dir(name, version), model, vocab, catalog,
                                         Provenance(stage="init", metrics={}))
        store.set_alias(name, decoder, version)
    return paths
