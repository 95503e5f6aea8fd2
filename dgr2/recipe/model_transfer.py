"""``dgr2 model transfer``: a trained checkpoint moved onto another data folder's catalog (its
vocabulary and catalog built from that folder), to evaluate zero-shot or to train from there.
The weights' side is ``dgr2.model_store.transfer``; the catalog comes from the data, hence here."""

from __future__ import annotations

import argparse
import json

import torch

from dgr2.model_store import open_store, resolve_checkpoint
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
    from dgr2.model_store.checkpoint import load_checkpoint
    from dgr2.model_store.transfer import transfer_checkpoint
    from dgr2.recipe.data import load_dataset

    src = resolve_checkpoint(args.checkpoint, args.from_store)
    data = load_dataset(args.data_dir)
    vocab = Vocab(build_tokenizer(data.catalog, load_checkpoint(src).vocab.co_strength))
    path = transfer_checkpoint(src, vocab, data.catalog, open_store(args.store), args.name, args.version,
                               args.alias, data.data_hash, getattr(torch, args.dtype))
    print(json.dumps({"path": str(path), "source": str(src), "vocab_size": len(vocab), "aliases": args.alias},
                     indent=2))
    return 0
