"""Item tables: ``items.jsonl`` (named fields, or an anonymous ``attributes`` list) and S3-Rec's
``<Name>_item2attributes.json``, read into catalog items keyed by the id the interactions use.

A catalog item carries its public id (what prompts and the service call it), title, brand and leaf
category; popularity and links are added later from training interactions (:mod:`recipe.data`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from dgr2.model.catalog import Item
from dgr2.recipe.formats.attributes import brand_and_category
from dgr2.recipe.formats.errors import DOC, DataError, at

# what a vocabulary token can hold (model.tokenizer: no whitespace, no angle brackets)
TOKEN_SAFE = re.compile(r"^[^\s<>]+$")
NAMED = ("brand", "category", "categories")  # an item table row that has any of these is not anonymous


@dataclass
class ItemTable:
    items: dict[str, Item]  # interaction id -> catalog item, in the table's order
    path: Path


def _text(row: dict, field: str, where) -> str | None:
    value = row.get(field)
    if value is None or isinstance(value, str):
        return value or None  # "" is no value, as a missing field
    raise DataError(f"{where(field)}: expected a string or null, got {json.dumps(value)[:40]} ({DOC})")


def _interaction_id(value, where, numeric: bool) -> str:
    """The id the interactions file uses for an item, as the readers spell it (integers without
    leading zeros where the interactions are S3-Rec's integer ids)."""
    if numeric:
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
            raise DataError(f"{where('item_id')}: expected an integer id (the ids of the sequence file), "
                            f"got {json.dumps(value)[:40]} ({DOC})")
        return str(int(value))
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value) == "":
        raise DataError(f"{where('item_id')}: expected a string or integer id, got {json.dumps(value)[:40]} ({DOC})")
    return str(value)


def _public_id(value, where, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value) == "":
        raise DataError(f"{where(field)}: expected a non-empty string or integer id, got {json.dumps(value)[:40]} "
                        f"({DOC})")
    value = str(value)
    if not TOKEN_SAFE.match(value):
        raise DataError(f"{where(field)}: item id {value!r} holds whitespace or angle brackets, which an item "
                        f"token cannot; rename the item ({DOC})")
    return value


def _category(row: dict, where) -> str | None:
    """``category`` as given, else the leaf of the first path in ``categories`` (the Beauty folder's form)."""
    if "category" in row:
        return _text(row, "category", where)
    paths = row.get("categories")
    if paths is None:
        return None
    if not (isinstance(paths, list) and all(isinstance(p, list) and all(isinstance(c, str) for c in p)
                                            for p in paths)):
        raise DataError(f"{where('categories')}: expected a list of category paths (lists of names, root first) "
                        f"({DOC})")
    return paths[0][-1] if paths and paths[0] else None


def _attributes(row: dict, where) -> list:
    attrs = row.get("attributes")
    if not isinstance(attrs, list) or not all(isinstance(a, int | str) and not isinstance(a, bool) for a in attrs):
        raise DataError(f"{where('attributes')}: expected a list of attribute ids or names ({DOC})")
    return attrs


def read_items_jsonl(path: Path, numeric_ids: bool) -> ItemTable:
    """``items.jsonl``: one JSON object a line. ``numeric_ids``: the interactions are S3-Rec's integer ids
    (the table's ``item_id`` must be one too, and the catalog is ordered by it, as the id order of
    the S3-Rec release); else the catalog keeps the table's order."""
    rows: dict[str, tuple[dict, int]] = {}
    public: dict[str, int] = {}
    anonymous: dict[str, list] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue

            def where(field, n=n):
                return at(path, n, field)

            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{at(path, n)}: not a JSON object ({e.msg}) ({DOC})") from None
            if not isinstance(row, dict):
                raise DataError(f"{at(path, n)}: expected a JSON object, got {type(row).__name__} ({DOC})")
            if "item_id" not in row:
                raise DataError(f"{where('item_id')}: missing; every item needs the id its interactions use ({DOC})")
            key = _interaction_id(row["item_id"], where, numeric_ids)
            if key in rows:
                raise DataError(f"{where('item_id')}: item {key} is also on line {rows[key][1]} ({DOC})")
            field = "id" if "id" in row else "asin" if "asin" in row else "item_id"
            pid = _public_id(row[field], where, field)
            if pid in public:
                raise DataError(f"{where(field)}: item id {pid!r} is also on line {public[pid]} ({DOC})")
            public[pid] = n
            rows[key] = (row, n)
            if "attributes" in row and not any(f in row for f in NAMED):
                anonymous[key] = _attributes(row, where)
    mapped = brand_and_category(anonymous)
    items = {}
    order = sorted(rows, key=int) if numeric_ids else list(rows)
    for key in order:
        row, n = rows[key]

        def where(field, n=n):
            return at(path, n, field)

        pid = str(row.get("id", row.get("asin", row["item_id"])))
        if key in mapped:
            brand, category = mapped[key]
        else:
            brand, category = _text(row, "brand", where), _category(row, where)
        title = row.get("title")  # kept as given ("" stays ""): the catalog is what earlier loads made
        if title is not None and not isinstance(title, str):
            raise DataError(f"{where('title')}: expected a string or null ({DOC})")
        items[key] = Item(id=pid, title=title, brand=brand, category=category)
    return ItemTable(items, path)


def read_attribute_lists(path: Path) -> dict[str, list]:
    """S3-Rec's ``<Name>_item2attributes.json`` as written: ``{"<item id>": [attribute id, ...]}``,
    keys as the sequence file spells them (integers without leading zeros), in the file's order."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{at(path, e.lineno)}: not JSON ({e.msg} at column {e.colno}) ({DOC})") from None
    if not isinstance(table, dict):
        raise DataError(f"{at(path, 1)}: expected one JSON object {{\"<item id>\": [attribute id, ...]}} ({DOC})")
    lists = {}
    for key, attrs in table.items():
        def where(field, key=key):
            return at(path, None, f"{field} of item {key!r}")

        if not key.strip().isdigit():
            raise DataError(f"{at(path, None, 'item id ' + repr(key))}: expected an integer id ({DOC})")
        lists[str(int(key))] = _attributes({"attributes": attrs}, where)
    return lists


def read_item2attributes(path: Path) -> ItemTable:
    """The attribute file as an item table: brand and category by the rule of :mod:`formats.attributes`,
    no titles, ordered by item id."""
    lists = read_attribute_lists(path)
    mapped = brand_and_category(lists)
    items = {k: Item(id=k, brand=mapped[k][0], category=mapped[k][1]) for k in sorted(lists, key=int)}
    return ItemTable(items, path)
