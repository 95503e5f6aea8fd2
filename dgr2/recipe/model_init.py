"""``dgr2 model init``: a random-init AR + diffusion checkpoint pair, aliased, so the service can run
before trained weights exist. Its vocabulary comes from a catalog, which is the data's concern."""

from __future__ import annotations

import argparse
import json
import os

from dgr2.model_store import DEFAULT_MODEL, open_store
from dgr2.model_store.commands import STORE_HELP
from dgr2.model_store.init import init_pair
from dgr2.recipe.data import DATA_ENV


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="architecture preset: tiny, small or base (default tiny)")
    p.add_argument("--name", default=None, help="model name in the store (default: the shipped default name)")
    p.add_argument("--store", default=None, help=STORE_HELP)
    p.add_argument("--seed", type=int, default=0, help="weight-init seed")
    p.add_argument("--data-dir", default=None,
                   help=f"build the vocabulary from the catalog of this data folder (docs/data.md; else ${DATA_ENV}, "
                        "else a small synthetic catalog)")


def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or os.environ.get(DATA_ENV)
    if data_dir:
        from dgr2.recipe.data import load_catalog

        catalog = load_catalog(data_dir)
    else:
        from dgr2.recipe.synthetic import synthetic_data

        catalog = synthetic_data().catalog
    paths = init_pair(open_store(args.store), args.name or DEFAULT_MODEL, catalog, args.preset, args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
