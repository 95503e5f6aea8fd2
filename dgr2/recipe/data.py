"""A data folder's leave-one-out splits, candidate lists and item features.

Reads a folder in any layout of docs/data.md (the project's ``interactions.csv`` + ``items.jsonl``,
or S3-Rec's release, e.g. Amazon Beauty or Toys) from ``--data-dir`` or ``$DGR2_DATA_DIR``; the
data is never committed. Readers live in :mod:`recipe.formats`.

Protocol (S3-Rec, P5 and the Diffusion-GR2 paper all use it):
* leave-one-out: a user's last item is the test target, the second last the validation target;
  training examples are every prefix that ends before the validation item (target = next item);
* K candidates (default 100): the target plus K-1 negatives drawn uniformly from the items outside
  the user's whole sequence, seeded (``neg_seed``), the same negatives for validation and test;
  the candidate order is shuffled so the target's slot is uniform.
Item features: the catalog's brand, leaf category, a popularity bucket and co-occurrence links,
all counted on training interactions only (everything before each user's validation item).
Two items are linked when they occur within ``WINDOW`` positions of each other in at least
``LINK_MIN`` training sequence windows; training examples subtract the user's own sequence first
(:func:`linked_without`), so a link never hints at a target through the example itself.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dgr2.model.catalog import Catalog, Item, popularity_buckets
from dgr2.recipe.formats.errors import DataError
from dgr2.recipe.formats.layouts import files_hash
from dgr2.recipe.formats.layouts import read as read_folder
from dgr2.recipe.traces import EvidenceRule

DATA_ENV = "DGR2_DATA_DIR"
RULE_FILE = "evidence-rule.json"  # optional in a data folder: the catalog's own evidence rule (dgr2 fit-rule --out)
WINDOW = 5
# One shared window is enough evidence: the evidence score ranks best with it (docs/design.md, "Prompt").
LINK_MIN = 1


@dataclass
class Example:
    user: str
    history: list[str]  # item ids, oldest first
    target: str
    candidates: list[str]  # includes the target, shuffled

    @property
    def target_slot(self) -> int:
        return self.candidates.index(self.target)


@dataclass
class CatalogData:
    catalog: Catalog
    sequences: dict[str, list[str]]  # user -> item ids (the catalog's public ids), oldest first
    item_ids: list[str]  # every catalog item id, the negative pool
    data_hash: str  # sha256 over the input files, recorded in checkpoint manifests
    pairs: Counter  # co-occurrence counts over training parts (see module docstring)
    counts: Counter  # interactions per item over training parts
    layout: str = "csv"  # the folder's layout (formats.layouts): "csv" or "s3rec"
    dropped_users: int = 0  # users left out for having fewer than 3 interactions
    rule: dict | None = None  # the folder's RULE_FILE: an evidence rule fitted to this catalog (dgr2 fit-rule)


class UserView:
    """The catalog as one user's training examples must see it: that user's own training
    interactions left out of popularity and links, so neither hints at a training target."""

    def __init__(self, catalog: Catalog, counts: Counter, pairs: Counter, own_sequence: Sequence[str]) -> None:
        self.catalog, self.counts, self.pairs = catalog, counts, pairs
        self.own = set(own_sequence)
        self.own_pairs = pair_counts([own_sequence])
        self.brand_index, self.category_index = catalog.brand_index, catalog.category_index

    def get(self, item_id: str) -> Item | None:
        item = self.catalog.get(item_id)
        if item is None or item_id not in self.own:
            return item
        pop = popularity_buckets({item_id: self.counts.get(item_id, 0) - 1})[item_id]
        return replace(item, pop=pop)

    has_link_counts = True  # counted from the training pairs themselves

    def link_count(self, a: str, b: str) -> int:
        n = self.pairs.get((a, b), 0) - self.own_pairs.get((a, b), 0)
        return n if n >= LINK_MIN else 0


def pair_counts(sequences: Sequence[Sequence[str]]) -> Counter:
    """Ordered pair counts ``(a, b)``: b within ``WINDOW`` positions of a in one sequence."""
    pairs: Counter = Counter()
    for seq in sequences:
        for i, a in enumerate(seq):
            for j in range(max(0, i - WINDOW), min(len(seq), i + WINDOW + 1)):
                if j != i:
                    pairs[(a, seq[j])] += 1
    return pairs


def links_from(pairs: Counter) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Each item's links, sorted, and their shared windows: ``(other items, counts)``."""
    out: dict[str, list[tuple[str, int]]] = {}
    for (a, b), n in pairs.items():
        if n >= LINK_MIN:
            out.setdefault(a, []).append((b, n))
    return {a: tuple(zip(*sorted(bs), strict=True)) for a, bs in out.items()}


def with_features(items: list[Item], train_sequences: dict[str, list[str]]) -> tuple[Catalog, Counter, Counter]:
    """The catalog with popularity buckets and links counted on ``train_sequences``."""
    counts = Counter(i for s in train_sequences.values() for i in s)
    pop = popularity_buckets({it.id: counts.get(it.id, 0) for it in items})
    pairs = pair_counts(list(train_sequences.values()))
    links = links_from(pairs)
    catalog = Catalog([Item(it.id, it.title, it.brand, it.category, pop[it.id], *links.get(it.id, ((), ())))
                       for it in items])
    return catalog, pairs, counts


def data_dir(given: str | os.PathLike | None) -> Path:
    path = given or os.environ.get(DATA_ENV)
    if not path:
        raise DataError(f"no data folder: pass --data-dir or set {DATA_ENV}")
    return Path(path)


def load_dataset(given_dir: str | os.PathLike | None = None) -> CatalogData:
    """The data folder at ``given_dir`` (else ``$DGR2_DATA_DIR``), in any layout of docs/data.md."""
    folder = data_dir(given_dir)
    raw = read_folder(folder)
    catalog, pairs, counts = with_features(raw.items, {u: s[:-2] for u, s in raw.sequences.items()})
    return CatalogData(catalog, raw.sequences, [it.id for it in raw.items], files_hash(raw.files), pairs, counts,
                       raw.layout, raw.dropped_users, read_rule(folder))


def read_rule(folder: Path) -> dict | None:
    """The folder's fitted evidence rule, checked (``DataError`` naming the file), or None without one."""
    path = folder / RULE_FILE
    if not path.is_file():
        return None
    try:
        rule = json.loads(path.read_text())
        EvidenceRule.from_dict(rule, str(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    except ValueError as e:
        raise DataError(str(e)) from None
    return rule


def load_catalog(given_dir: str | os.PathLike | None = None) -> Catalog:
    return load_dataset(given_dir).catalog


def sample_negatives(rng: random.Random, pool: list[str], exclude: set[str], n: int) -> list[str]:
    """``n`` distinct items drawn uniformly from ``pool`` minus ``exclude`` (rejection sampling)."""
    if len(pool) - len(exclude) < n:
        raise DataError(f"a user's sequence leaves {len(pool) - len(exclude)} of the {len(pool)} items for {n} "
                        f"negatives: lower --candidates to at most {len(pool) - len(exclude) + 1}")
    out: list[str] = []
    chosen: set[str] = set()
    while len(out) < n:
        item = pool[rng.randrange(len(pool))]
        if item not in exclude and item not in chosen:
            chosen.add(item)
            out.append(item)
    return out


SAMPLE_SEED = 0  # the one fixed user sample of ``--sample`` (documented, so any run can repeat it)


def eval_examples(sequences: dict[str, list[str]], pool: list[str], split: str, num_candidates: int = 100,
                  neg_seed: int = 12345, limit: int | None = None, sample: int | None = None) -> list[Example]:
    """One example per user: target = last item (test) or second last (valid).

    ``limit``: the first N users of the file; ``sample``: N users drawn uniformly (seed
    ``SAMPLE_SEED``), an unbiased estimate of the all-users metrics where the first users are not
    (docs/recipe.md, "Data protocol"). Each user's candidate list depends only on ``neg_seed`` and the
    user, so a subset's lists are those of the all-users run.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, not {split!r}")
    if limit is not None and sample is not None:
        raise ValueError("give limit or sample, not both")
    users = list(sequences)
    if sample is not None:
        if not 1 <= sample <= len(users):
            raise ValueError(f"sample must be in 1..{len(users)} users, not {sample}")
        chosen = set(random.Random(SAMPLE_SEED).sample(users, sample))
        users = [u for u in users if u in chosen]
    room = len(pool) - max((len(set(s)) for s in sequences.values()), default=0)  # the longest user's
    if room < num_candidates - 1:
        raise DataError(f"{num_candidates} candidates need {num_candidates - 1} negatives outside each user's "
                        f"sequence, and the longest leaves {room} of the {len(pool)} items: lower --candidates "
                        f"to at most {room + 1}")
    out = []
    for user in users:
        seq = sequences[user]
        if limit is not None and len(out) >= limit:
            break
        rng = random.Random(f"{neg_seed}:{user}")  # same negatives for valid and test, per user
        negatives = sample_negatives(rng, pool, set(seq), num_candidates - 1)
        cut = len(seq) - 1 if split == "test" else len(seq) - 2
        candidates = [seq[cut], *negatives]
        random.Random(f"{neg_seed}:{user}:{split}:order").shuffle(candidates)
        out.append(Example(user, seq[:cut], seq[cut], candidates))
    return out


def train_prefixes(sequences: dict[str, list[str]]) -> list[tuple[str, int]]:
    """(user, cut) for every training example: history ``seq[:cut]``, target ``seq[cut]``, ``1 <= cut <= n-3``."""
    return [(user, cut) for user, seq in sequences.items() for cut in range(1, len(seq) - 2)]


def train_example(sequences: dict[str, list[str]], pool: list[str], user: str, cut: int, num_candidates: int,
                  rng: random.Random) -> Example:
    """A training example with fresh negatives (outside the user's whole sequence, so never a future item)."""
    seq = sequences[user]
    negatives = sample_negatives(rng, pool, set(seq), num_candidates - 1)
    candidates = [seq[cut], *negatives]
    rng.shuffle(candidates)
    return Example(user, seq[:cut], seq[cut], candidates)


def load_source(data_dir: str | os.PathLike | None, synthetic: bool):
    """The data a command runs on: the generated synthetic set (tests, smoke runs) or a data folder."""
    if synthetic:
        from dgr2.recipe.synthetic import synthetic_data  # synthetic builds on this module

        return synthetic_data()
    return load_dataset(data_dir)
