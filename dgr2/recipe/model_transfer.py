"""``dgr2 model transfer``: a trained checkpoint moved onto another data folder's catalog (its
vocabulary and catalog built from that folder), to evaluate zero-shot or to train from there.
The weights' side is ``dgr2.model_store.transfer``; the catalog comes from the data, hence here, and
the result is stored like a trained model (``recipe.publish``)."""

from __future__ import annotations

import argparse
import json

import torch

from dgr2.model_store import resolve_checkpoint
from dgr2.model_store.commands import STORE_HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="NAME[:VERSION_OR_ALIAS] in --from-store, or a checkpoint folder")
    p.add_argument("--data-dir", default=None, help="the new catalog's data folder (docs/data.md; default: "
                                                    "$DGR2_DATA_DIR)")
    p.add_argument("--from-store", default=None, help="store holding the source (default: the shipped store)")
    p.add_argument("--store", default=None, help=STORE_HELP + "; the destination")
    p.add_argument("--name", required=True, help="model name at the destination (one per catalog)")
    p.add_argument("--version", required=True, help="version name at the destination")
    p.add_argument("--alias", action="append", default=[], help="alias to point at the result (repeatable)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="weight dtype on disk")


def run(args: argparse.Namespace) -> int:
    from dgr2.model.tokenizer import Vocab, build_tokenizer
    from dgr2.model_store import Provenance, load_checkpoint
    from dgr2.model_store.transfer import transferred_model
    from dgr2.recipe.data import load_dataset
    from dgr2.recipe.publish import publish

    src = load_checkpoint(resolve_checkpoint(args.checkpoint, args.from_store))
    data = load_dataset(args.data_dir)
    vocab = Vocab(build_tokenizer(data.catalog, src.vocab.co_strength))
    source = {"source": src.path.name, "source_data_hash": src.manifest.get("data_hash")}
    prov = Provenance(stage=src.manifest.get("stage", "unknown"), parent=f"transfer of {src.path.name}",
                      data_hash=data.data_hash, metrics={"transfer": source})
    path = publish(args.store, args.name, args.version, args.alias, transferred_model(src, vocab), vocab,
                   data.catalog, prov, decoder=src.config.decoder, dtype=getattr(torch, args.dtype))
    print(json.dumps({"path": str(path), "source": str(src.path), "vocab_size": len(vocab), "aliases": args.alias},
                     indent=2))
    return 0
