"""Small generated data with known preferences, so tests run in seconds with no external data.

Each user has a favourite brand and a favourite category; most of their items are drawn from
those, the rest uniformly. A re-ranker that learns anything should put candidates sharing the
user's brand/category first, which is what the training tests check.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from dgr2.model.catalog import Catalog, Item
from dgr2.recipe.data import with_features


@dataclass
class SyntheticData:
    catalog: Catalog
    sequences: dict[str, list[str]]  # user id -> item ids, oldest first
    preference: dict[str, tuple[str, str]]  # user id -> (brand, category)
    pairs: Counter  # co-occurrence counts over the training parts
    counts: Counter  # interactions per item over the training parts
    rule: dict | None = None  # a fitted evidence rule, as a data folder's (none: the prompt version's)

    @property
    def item_ids(self) -> list[str]:
        return self.catalog.ids()


def synthetic_data(n_items: int = 60, n_users: int = 200, n_brands: int = 6, n_categories: int = 5,
                   min_len: int = 5, max_len: int = 12, p_preferred: float = 0.85, seed: int = 0) -> SyntheticData:
    rng = random.Random(seed)
    brands = [f"brand{b}" for b in range(n_brands)]
    categories = [f"category{c}" for c in range(n_categories)]
    raw = [Item(id=f"S{i:04d}", title=f"synthetic item {i}", brand=brands[i % n_brands],
                category=categories[(i * 7 + i // n_brands) % n_categories]) for i in range(n_items)]
    sequences, preference = {}, {}
    for u in range(n_users):
        user = f"U{u:05d}"
        brand, cat = rng.choice(brands), rng.choice(categories)
        liked = [it.id for it in raw if it.brand == brand or it.category == cat]
        others = [it.id for it in raw if it.id not in set(liked)]
        n = min(rng.randint(min_len, max_len), len(raw))
        seq: list[str] = []
        while len(seq) < n:
            pool = liked if rng.random() < p_preferred else others
            fresh = [i for i in pool if i not in seq] or [i for i in liked + others if i not in seq]
            seq.append(rng.choice(fresh))
        sequences[user], preference[user] = seq, (brand, cat)
    catalog, pairs, counts = with_features(raw, {u: s[:-2] for u, s in sequences.items()})  # training parts only
    return SyntheticData(catalog, sequences, preference, pairs, counts)
