"""``dgr2 data attributes``: how the anonymous-attribute rule (:mod:`formats.attributes`) reads an
S3-Rec folder, and whether what it takes as brands behaves like brands.

For the most common brand-position attributes: the items carrying one, and its repeat lift: how much
more often than its share of all interactions a user's next interaction carries it, given the
current one does (consecutive interactions of the sequence file). That repeat is what the evidence
rule rewards a brand match for, so an attribute with a lift near 1 gives the rule a match that
predicts nothing (Toys' attribute 1, docs/data.md). Where the folder also names its attributes (the
Beauty folder's ``items.jsonl``, whose ``brand_source`` says which lists start with a brand, and P5's
``datamaps.json``), the rule is checked against the names.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from dgr2.recipe.formats.attributes import brand_and_category
from dgr2.recipe.formats.errors import DOC, DataError
from dgr2.recipe.formats.items import read_attribute_lists
from dgr2.recipe.formats.layouts import ATTRIBUTES_SUFFIX, ITEMS_FILE, detect

TOP = 8  # brand-position attributes listed


def _sequences(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [[str(int(x)) for x in line.split()[1:]] for line in f if line.strip()]


def repeat_lifts(brand: dict[str, str | None], sequences: list[list[str]]) -> dict[str, float]:
    """Per brand: P(next interaction carries it | this one does) / its share of all interactions."""
    share = Counter(brand.get(i) for s in sequences for i in s)
    total = sum(share.values())
    after, again = Counter(), Counter()
    for s in sequences:
        for a, b in zip(s, s[1:], strict=False):
            if brand.get(a):
                after[brand[a]] += 1
                again[brand[a]] += brand.get(b) == brand[a]
    return {x: round(again[x] / after[x] / (share[x] / total), 2) for x in after}


def _names_check(folder: Path, lists: dict[str, list], mapped: dict, lifts: dict[str, float]) -> dict | None:
    """The rule against the Beauty folder's names: which lists start with a brand (``brand_source``
    ``s3rec_attributes``) and the leaf category of each item's first path."""
    datamaps, items = folder / "datamaps.json", folder / ITEMS_FILE
    if not (datamaps.is_file() and items.is_file()):
        return None
    maps = json.loads(datamaps.read_text(encoding="utf-8"))
    # S3-Rec's attribute k is the k-th of P5's attribute ids kept (on at least 5 items), in id order
    kept = sorted(int(k) for k, n in maps["attributeid2num"].items() if int(n) >= 5)
    name = {str(k): maps["id2attribute"][str(a)] for k, a in enumerate(kept, 1)}
    rows = {str(r["item_id"]): r for r in map(json.loads, items.read_text(encoding="utf-8").splitlines())}
    found = Counter()
    wrong_brands, wrong_lifts = Counter(), {}
    for key, (brand, category) in mapped.items():
        row = rows[key]
        truth = row.get("brand_source") == "s3rec_attributes"
        found["brand_right" if truth and brand else "brand_missed" if truth else "brand_wrong" if brand else
              "no_brand_right"] += 1
        if brand and not truth:
            wrong_brands[name[brand]] += 1
            wrong_lifts[name[brand]] = lifts.get(brand)
        paths = row.get("categories") or [[]]
        found["category_is_leaf"] += bool(category) and bool(paths[0]) and name[category] == paths[0][-1]
    return {**found, "items": len(lists), "wrong_brands_by_name": dict(wrong_brands.most_common()),
            "wrong_brands_repeat_lift": wrong_lifts}


def report(folder: Path) -> dict:
    layout = detect(folder)
    tables = sorted(folder.glob(f"*{ATTRIBUTES_SUFFIX}"))
    if layout.name != "s3rec" or not tables:
        raise DataError(f"{folder} has no <Name>{ATTRIBUTES_SUFFIX}: the rule reads anonymous attribute "
                        f"lists only ({DOC})")
    lists = read_attribute_lists(tables[0])
    mapped = brand_and_category(lists)
    brand = {k: b for k, (b, _) in mapped.items()}
    carried = Counter(b for b in brand.values() if b)
    lifts = repeat_lifts(brand, _sequences(layout.interactions))
    return {
        "attributes_file": tables[0].name, "items": len(lists),
        "items_with_brand": sum(carried.values()), "brands": len(carried),
        "items_with_category": sum(1 for _, c in mapped.values() if c),
        "categories": len({c for _, c in mapped.values() if c}),
        "brand_position": [{"attribute": b, "items": n, "repeat_lift": lifts.get(b)}
                           for b, n in carried.most_common(TOP)],
        # an id nearly every item carries matches nearly every candidate: no evidence as a "shared attribute"
        "most_carried": [{"attribute": str(a), "items": n}
                         for a, n in Counter(a for attrs in lists.values() for a in set(attrs)).most_common(3)],
        "checked_against_names": _names_check(folder, lists, mapped, lifts),
    }
