"""Writing a data set in the project's own layout (``interactions.csv`` + ``items.jsonl``).

What ``dgr2 data import`` writes: any readable folder, with the brand and category each item got
(an anonymous attribute list's mapping included) as named fields a user can read and edit.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from dgr2.model.catalog import Item
from dgr2.recipe.formats.errors import DataError
from dgr2.recipe.formats.interactions import CSV_COLUMNS
from dgr2.recipe.formats.layouts import CSV_FILE, ITEMS_FILE


def check_out(out: Path) -> list[Path]:
    """The two files ``out`` will hold; refused when either exists or ``out`` cannot be a folder."""
    targets = [out / CSV_FILE, out / ITEMS_FILE]
    if out.exists() and not out.is_dir():
        raise DataError(f"cannot create {out}: File exists; give --out a folder you can write")
    taken = [p.name for p in targets if p.exists()]
    if taken:
        raise DataError(f"{out} already holds {', '.join(taken)}; give --out an empty or new folder")
    return targets


def write_layout(out: Path, sequences: dict[str, list[str]], items: list[Item]) -> list[Path]:
    """Write ``out/interactions.csv`` (the timestamp is each interaction's position in its user's
    sequence) and ``out/items.jsonl`` (catalog order); refuses to overwrite either file."""
    targets = check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {out}: {e.strerror}; give --out a folder you can write") from None
    tmp = [p.with_name(p.name + ".part") for p in targets]
    with open(tmp[0], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for user, seq in sequences.items():
            w.writerows((user, item, t) for t, item in enumerate(seq))
    with open(tmp[1], "w", encoding="utf-8") as f:
        for it in items:
            row = {"item_id": it.id, "title": it.title, "brand": it.brand, "category": it.category}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    for part, final in zip(tmp, targets, strict=True):
        os.replace(part, final)  # both complete before either carries the final name
    return targets
