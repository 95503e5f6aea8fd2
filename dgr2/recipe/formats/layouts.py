"""Which layout a data folder holds, and reading it.

* ``csv`` (the project's own): ``interactions.csv`` + ``items.jsonl``;
* ``s3rec`` (S3-Rec's release): ``<Name>.txt`` + ``<Name>_item2attributes.json`` and/or ``items.jsonl``
  (``items.jsonl`` is the item table when both are there: names and titles, as the Beauty folder's).

The folder is read as it is, with no conversion step (docs/design.md, "Data folders").
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from dgr2.model.catalog import Item
from dgr2.recipe.formats.errors import DOC, DataError
from dgr2.recipe.formats.interactions import read_interactions_csv, read_sequence_file
from dgr2.recipe.formats.items import ItemTable, read_item2attributes, read_items_jsonl

log = logging.getLogger(__name__)

CSV_FILE, ITEMS_FILE, ATTRIBUTES_SUFFIX = "interactions.csv", "items.jsonl", "_item2attributes.json"
MIN_INTERACTIONS = 3  # leave-one-out needs a test item, a validation item and one item of history


@dataclass
class RawData:
    layout: str  # "csv" | "s3rec"
    files: list[Path]  # the files read: interactions, then the item table (the data hash covers them)
    sequences: dict[str, list[str]]  # user -> public item ids, oldest first
    items: list[Item]  # the catalog, in order (the negative pool's order)
    dropped_users: int  # users with fewer than MIN_INTERACTIONS interactions, left out


@dataclass
class Layout:
    name: str
    interactions: Path
    items: Path


def detect(folder: Path) -> Layout:
    """The layout of ``folder``, or a DataError that says what it lacks."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: pass --data-dir (or set DGR2_DATA_DIR to) a data folder ({DOC})")
    items = folder / ITEMS_FILE
    if (folder / CSV_FILE).is_file():
        if not items.is_file():
            raise DataError(f"{folder} has {CSV_FILE} but lacks {ITEMS_FILE}, its item table ({DOC})")
        return Layout("csv", folder / CSV_FILE, items)
    tables = sorted(folder.glob(f"*{ATTRIBUTES_SUFFIX}"))
    if len(tables) > 1:
        raise DataError(f"{folder} holds several S3-Rec data sets ({', '.join(t.name for t in tables)}); "
                        f"give each its own folder ({DOC})")
    if tables:
        name = tables[0].name[: -len(ATTRIBUTES_SUFFIX)]
        seq = folder / f"{name}.txt"
        if not seq.is_file():
            raise DataError(f"{folder} has {tables[0].name} but lacks {seq.name}, its sequence file ({DOC})")
        return Layout("s3rec", seq, items if items.is_file() else tables[0])
    texts = [p for p in sorted(folder.glob("*.txt")) if p.stem.lower() != "readme"]
    if len(texts) == 1 and items.is_file():
        return Layout("s3rec", texts[0], items)
    if len(texts) == 1:
        raise DataError(f"{folder} has {texts[0].name} but no item table: add {texts[0].stem}{ATTRIBUTES_SUFFIX} "
                        f"or {ITEMS_FILE} ({DOC})")
    if texts:
        raise DataError(f"{folder} holds several sequence files ({', '.join(t.name for t in texts)}) and no "
                        f"<Name>{ATTRIBUTES_SUFFIX} to say which is the data set; give each its own folder ({DOC})")
    raise DataError(f"{folder} holds no data set: expected {CSV_FILE} + {ITEMS_FILE}, or S3-Rec's <Name>.txt + "
                    f"<Name>{ATTRIBUTES_SUFFIX} ({DOC})")


def read(folder: Path) -> RawData:
    layout = detect(folder)
    numeric = layout.name == "s3rec"  # S3-Rec's sequence files hold integer ids
    table: ItemTable = (read_items_jsonl(layout.items, numeric) if layout.items.name == ITEMS_FILE
                        else read_item2attributes(layout.items))
    reader = read_interactions_csv if layout.name == "csv" else read_sequence_file
    by_key = reader(layout.interactions, table.items, table.path)
    kept = {u: s for u, s in by_key.items() if len(s) >= MIN_INTERACTIONS}
    dropped = len(by_key) - len(kept)
    if dropped:
        log.warning("%s: left out %d of %d users with fewer than %d interactions (leave-one-out needs %d)",
                    layout.interactions, dropped, len(by_key), MIN_INTERACTIONS, MIN_INTERACTIONS)
    if not kept:
        raise DataError(f"{layout.interactions.name}: no user has {MIN_INTERACTIONS} or more interactions, "
                        f"which leave-one-out needs ({DOC})")
    public = {k: it.id for k, it in table.items.items()}
    sequences = {u: [public[k] for k in s] for u, s in kept.items()}
    return RawData(layout.name, [layout.interactions, layout.items], sequences, list(table.items.values()), dropped)


def files_hash(paths: list[Path]) -> str:
    """sha256 over the files' bytes, in order (16 hex digits), recorded in checkpoint manifests."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
