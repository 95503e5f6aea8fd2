"""Interaction files: S3-Rec's ``<Name>.txt`` (one user a line, items in order) and the project's
``interactions.csv`` (``user,item,timestamp`` rows, any order), read into each user's items,
oldest first, as the ids the item table is keyed by.

Every item must be in the item table; the message of the first that is not names its line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Container
from pathlib import Path

from dgr2.recipe.formats.errors import DOC, DataError, at

CSV_COLUMNS = ("user", "item", "timestamp")  # the header of interactions.csv


def read_sequence_file(path: Path, known: Container[str], table: Path) -> dict[str, list[str]]:
    """``user_id item_id item_id ...`` a line, items oldest first, integer item ids."""
    seqs: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            user = parts[0]
            if user in seqs:
                raise DataError(f"{at(path, n, '1')}: user {user} also has line {first_line[user]}; "
                                f"give each user one line ({DOC})")
            items = []
            for k, x in enumerate(parts[1:], 2):
                if not x.isdigit():
                    raise DataError(f"{at(path, n, str(k))}: item {x!r} is not an integer id "
                                    f"(a line is 'user item item ...') ({DOC})")
                key = str(int(x))
                if key not in known:
                    raise DataError(f"{at(path, n, str(k))}: item {key} is not in {table.name}; "
                                    f"add it there or drop the interaction ({DOC})")
                items.append(key)
            seqs[user], first_line[user] = items, n
    return seqs


def _timestamp(value: str, path: Path, line: int) -> float:
    try:
        t = float(value)
    except ValueError:
        t = math.nan
    if not math.isfinite(t):
        raise DataError(f"{at(path, line, 'timestamp')}: {value!r} is not a number; give seconds since the epoch "
                        f"or any numeric order key ({DOC})")
    return t


def read_interactions_csv(path: Path, known: Container[str], table: Path) -> dict[str, list[str]]:
    """``user,item,timestamp`` with a header row (other columns ignored); each user's items sorted by
    timestamp, equal timestamps in file order. Users come in the order of their first row."""
    rows: dict[str, list[tuple[float, str]]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{at(path, 1)}: the header lacks {', '.join(missing)}; the first line must name "
                            f"the columns user,item,timestamp ({DOC})")
        for row in reader:
            n = reader.line_num
            user, item = (row["user"] or "").strip(), (row["item"] or "").strip()
            if not user:
                raise DataError(f"{at(path, n, 'user')}: empty ({DOC})")
            if not item:
                raise DataError(f"{at(path, n, 'item')}: empty ({DOC})")
            if item not in known:
                raise DataError(f"{at(path, n, 'item')}: item {item!r} is not in {table.name}; "
                                f"add it there or drop the interaction ({DOC})")
            rows.setdefault(user, []).append((_timestamp((row["timestamp"] or "").strip(), path, n), item))
    # sorted() is stable: interactions with equal timestamps keep the file's order
    return {u: [item for _, item in sorted(r, key=lambda x: x[0])] for u, r in rows.items()}
