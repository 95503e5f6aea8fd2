"""The item catalog: the features the prompt renders for each item.

An item is described by its id, brand, leaf category and a popularity bucket (computed on training
interactions only). Brand and category names map to vocabulary tokens by their index in the
catalog's sorted name lists, so the catalog file fixes the tokenizer's feature vocabulary.
"""

from __future__ import annotations

import json
import lzma
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

POP_BUCKETS = 10  # popularity is rendered as one of <pop0>..<pop9> (0 = never seen in training)


@dataclass(frozen=True)
class Item:
    id: str
    title: str | None = None
    brand: str | None = None
    category: str | None = None  # leaf category name
    pop: int = 0  # popularity bucket in [0, POP_BUCKETS)
    # items that co-occur with this one in other users' training sequences (see recipe.traces):
    # the prompt marks a candidate linked to a history item, which the trace cites as evidence
    links: tuple[str, ...] = ()
    # shared windows per link, parallel to ``links``; empty in catalogs written before the counts
    # were kept (their prompts show links only, see model.prompt)
    link_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "links", tuple(self.links))
        object.__setattr__(self, "link_counts", tuple(self.link_counts))
        if self.link_counts and len(self.link_counts) != len(self.links):
            raise ValueError(f"item {self.id!r}: {len(self.link_counts)} link counts for {len(self.links)} links")


class Catalog:
    def __init__(self, items: list[Item]) -> None:
        self.items: dict[str, Item] = {}
        for it in items:
            if it.id in self.items:
                raise ValueError(f"duplicate item id {it.id!r} in catalog")
            if not 0 <= it.pop < POP_BUCKETS:
                raise ValueError(f"item {it.id!r}: pop bucket {it.pop} outside [0, {POP_BUCKETS})")
            self.items[it.id] = it
        self.brands: list[str] = sorted({it.brand for it in items if it.brand})
        self.categories: list[str] = sorted({it.category for it in items if it.category})
        self.brand_index = {b: i for i, b in enumerate(self.brands)}
        # a -> {b: shared windows}; 1 stands for "linked" where the catalog has no counts
        self._links = {it.id: dict(zip(it.links, it.link_counts or [1] * len(it.links), strict=True))
                       for it in items if it.links}
        self.has_link_counts = any(it.link_counts for it in items) or not self._links
        self.category_index = {c: i for i, c in enumerate(self.categories)}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.items

    def get(self, item_id: str) -> Item | None:
        return self.items.get(item_id)

    def linked(self, a: str, b: str) -> bool:
        """Whether items ``a`` and ``b`` co-occur often enough in training data to be linked."""
        return self.link_count(a, b) > 0

    def link_count(self, a: str, b: str) -> int:
        """How many training windows ``a`` and ``b`` share (0: not linked)."""
        return self._links.get(a, {}).get(b, 0)

    def ids(self) -> list[str]:
        return list(self.items)

    def save(self, path: str | Path) -> None:
        """JSON lines, one item each; xz-compressed when ``path`` ends in ``.xz``."""
        with _open_text(path, "wt") as f:
            for it in self.items.values():
                row = asdict(it)
                row["links"] = list(it.links)
                row["link_counts"] = list(it.link_counts)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        items = []
        with _open_text(path, "rt") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    # ~60 links per item name ~12k distinct ids: one shared string each (~40% of the RSS)
                    row["links"] = [sys.intern(x) for x in row.get("links", ())]
                    items.append(Item(**row))
                except (json.JSONDecodeError, TypeError) as e:
                    raise ValueError(f"{Path(path).name}: line {n} is not a catalog item: {e}") from None
        return cls(items)


def _open_text(path: str | Path, mode: str):
    if str(path).endswith(".xz"):
        return lzma.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def popularity_buckets(counts: dict[str, int]) -> dict[str, int]:
    """Log-scale popularity buckets: 0 for unseen items, then 1..POP_BUCKETS-1 by log2 of the count."""
    import math

    out = {}
    for item_id, c in counts.items():
        out[item_id] = 0 if c <= 0 else min(POP_BUCKETS - 1, 1 + int(math.log2(c)))
    return out
