"""``dgr2 data check|import|attributes``: what a data folder holds as the recipe reads it, a copy of it
in the project's own layout, and how an anonymous attribute list was read.

``check`` prints the counts the leave-one-out protocol will see (users left out included) and how
many items got a brand and a category; ``import`` writes ``interactions.csv`` + ``items.jsonl``;
``attributes`` reports the brand-position attributes of an S3-Rec folder (``formats.attribute_report``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dgr2.recipe.data import DATA_ENV, data_dir, load_dataset
from dgr2.recipe.formats.export import check_out, write_layout
from dgr2.recipe.formats.layouts import MIN_INTERACTIONS, detect


@dataclass(frozen=True)
class Command:
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help=f"the data folder, in any layout of docs/data.md (default: ${DATA_ENV})")


def summary(folder: Path) -> dict:
    """What the recipe reads from ``folder``: layout, files, and the counts of docs/data.md, "Checking a folder"."""
    data = load_dataset(folder)
    items = list(data.catalog.items.values())
    layout = detect(folder)
    return {
        "data_dir": str(folder), "layout": data.layout,
        "files": [layout.interactions.name, layout.items.name], "data_hash": data.data_hash,
        "users": len(data.sequences), "dropped_users": data.dropped_users,
        "dropped_below": MIN_INTERACTIONS, "items": len(items),
        "interactions": sum(len(s) for s in data.sequences.values()),
        "items_with_title": sum(1 for it in items if it.title),
        "items_with_brand": sum(1 for it in items if it.brand), "brands": len(data.catalog.brands),
        "items_with_category": sum(1 for it in items if it.category), "categories": len(data.catalog.categories),
    }


def _check(args: argparse.Namespace) -> int:
    print(json.dumps(summary(data_dir(args.data_dir)), indent=2))
    return 0


def _import_arguments(p: argparse.ArgumentParser) -> None:
    _source(p)
    p.add_argument("--out", required=True, help="folder to write interactions.csv and items.jsonl into "
                                                "(created if missing; existing files are never overwritten)")


def _import(args: argparse.Namespace) -> int:
    folder = data_dir(args.data_dir)
    check_out(Path(args.out))  # before the reading, which can take a while
    data = load_dataset(folder)
    written = write_layout(Path(args.out), data.sequences, list(data.catalog.items.values()))
    print(json.dumps({"from": str(folder), "layout": data.layout, "wrote": [str(p) for p in written],
                      "users": len(data.sequences), "dropped_users": data.dropped_users,
                      "items": len(data.catalog)}, indent=2))
    return 0


def _attributes(args: argparse.Namespace) -> int:
    from dgr2.recipe.formats.attribute_report import report

    print(json.dumps(report(data_dir(args.data_dir)), indent=2))
    return 0


CHECK = Command(_source, _check)
ATTRIBUTES = Command(_source, _attributes)
IMPORT = Command(_import_arguments, _import)
