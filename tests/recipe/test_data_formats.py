"""The data folder layouts of docs/data.md, on a small generated catalog written in each of them:
what each reads to, that they agree, the anonymous attribute rule, the users left out, the import,
and one precise line for each kind of bad input."""

import csv
import json
import logging
import random
from collections import Counter

import pytest

from dgr2.model.tokenizer import Vocab, build_tokenizer
from dgr2.recipe.data import DataError, eval_examples, load_dataset
from dgr2.recipe.formats.attribute_report import repeat_lifts, report
from dgr2.recipe.formats.attributes import brand_and_category
from dgr2.recipe.formats.export import write_layout
from dgr2.recipe.sft import encode

NAME = "Toy_Shop"  # an S3-Rec-style data set name: Toy_Shop.txt + Toy_Shop_item2attributes.json
BRANDS = ["Acme", "Bolt", "Cora", "Dune"]
RARE_BRAND = "Rare Co"  # on 3 items: S3-Rec keeps attributes of at least 5 items only
PATHS = [["Toys", "Games", "Board"], ["Toys", "Games", "Cards"], ["Toys", "Dolls"], ["Toys", "Puzzles", "Jigsaw"]]
N_ITEMS, N_USERS, SHORT_USERS = 40, 30, 2


def catalog_rows() -> list[dict]:
    rows = []
    for i in range(1, N_ITEMS + 1):
        brand = RARE_BRAND if i <= 3 else None if i % 7 == 0 else BRANDS[i % 4]
        rows.append({"item_id": i, "asin": f"P{i:04d}", "title": f"item {i}", "brand": brand,
                     "categories": [PATHS[(i * 3) % 4]]})
    return rows


def s3rec_attributes(rows: list[dict]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """S3-Rec's construction (its data_process.py): brand first when frequent, then the path's
    names without the root, filtered to names of at least 5 items, ids by first appearance."""
    count: dict[str, int] = {}
    for r in rows:
        for name in [r["brand"], *r["categories"][0][1:]]:
            if name:
                count[name] = count.get(name, 0) + 1
    ids: dict[str, int] = {}
    lists = {}
    for r in rows:
        names = [n for n in [r["brand"], *r["categories"][0][1:]] if n and count[n] >= 5]
        lists[str(r["item_id"])] = [ids.setdefault(n, len(ids) + 1) for n in names]
    return lists, ids


def sequences() -> dict[str, list[int]]:
    rng = random.Random(3)
    seqs = {str(u): rng.sample(range(1, N_ITEMS + 1), rng.randint(5, 9)) for u in range(1, N_USERS + 1)}
    for u in range(N_USERS + 1, N_USERS + SHORT_USERS + 1):  # too short for leave-one-out: left out
        seqs[str(u)] = rng.sample(range(1, N_ITEMS + 1), 2)
    return seqs


def write_s3rec(folder, named: bool, anonymous: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    rows = catalog_rows()
    (folder / f"{NAME}.txt").write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in sequences().items()))
    if anonymous:
        (folder / f"{NAME}_item2attributes.json").write_text(json.dumps(s3rec_attributes(rows)[0]))
    if named:
        (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def write_csv(folder):
    """The same interactions as ``user,item,timestamp`` rows, each user's newest first (the reader sorts),
    items by their ASIN, leaf categories as named ``category``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = catalog_rows()
    asin = {r["item_id"]: r["asin"] for r in rows}
    with open(folder / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp", "rating"])  # an extra column is ignored
        for u, s in sequences().items():
            for t, item in reversed(list(enumerate(s))):
                w.writerow([u, asin[item], 1_400_000_000 + 86_400 * t, 5])
    (folder / "items.jsonl").write_text("".join(
        json.dumps({"item_id": r["asin"], "title": r["title"], "brand": r["brand"],
                    "category": r["categories"][0][-1]}) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {"anonymous": write_s3rec(root / "anonymous", named=False), "named": write_s3rec(root / "named", True),
            "csv": write_csv(root / "csv")}


def test_each_layout_reads_the_same_users_and_sequences(folders, caplog):
    asin = {r["item_id"]: r["asin"] for r in catalog_rows()}
    kept = {u: s for u, s in sequences().items() if len(s) >= 3}
    for kind, folder in folders.items():
        with caplog.at_level(logging.WARNING):
            data = load_dataset(folder)
        assert data.layout == ("csv" if kind == "csv" else "s3rec")
        assert data.dropped_users == SHORT_USERS
        assert f"left out {SHORT_USERS} of {N_USERS + SHORT_USERS} users" in caplog.text
        caplog.clear()
        ids = (lambda i: str(i)) if kind == "anonymous" else asin.get
        assert data.sequences == {u: [ids(i) for i in s] for u, s in kept.items()}
        assert data.item_ids == [ids(i) for i in range(1, N_ITEMS + 1)] == data.catalog.ids()
        assert len(data.data_hash) == 16


def test_named_layouts_agree_on_catalog_candidates_and_prompts(folders):
    """The S3-Rec folder with items.jsonl and the CSV folder hold the same data: same catalog, same
    candidate lists, same prompt tokens."""
    named, flat = load_dataset(folders["named"]), load_dataset(folders["csv"])
    assert list(named.catalog.items.values()) == list(flat.catalog.items.values())
    assert named.catalog.get("P0004").brand == "Acme" and named.catalog.get("P0004").category == "Board"
    vocab = Vocab(build_tokenizer(named.catalog))
    for split in ("valid", "test"):
        a = eval_examples(named.sequences, named.item_ids, split, 12, 5)
        b = eval_examples(flat.sequences, flat.item_ids, split, 12, 5)
        assert [(e.user, e.target, e.candidates) for e in a] == [(e.user, e.target, e.candidates) for e in b]
        assert [encode(vocab, named, e).ids for e in a] == [encode(vocab, flat, e).ids for e in b]


def test_anonymous_attributes_map_to_brand_and_category_as_built(folders):
    """On lists built as S3-Rec builds them, the rule recovers every kept brand and the leaf category."""
    rows = catalog_rows()
    _, ids = s3rec_attributes(rows)
    data = load_dataset(folders["anonymous"])
    for r in rows:
        item = data.catalog.get(str(r["item_id"]))
        brand = r["brand"] if r["brand"] in ids else None  # the rare brand was never in the list
        assert item.brand == (None if brand is None else str(ids[brand]))
        assert item.category == str(ids[r["categories"][0][-1]])
        assert item.title is None
    assert sum(1 for it in data.catalog.items.values() if it.brand) == sum(1 for r in rows if r["brand"] in ids)


def test_the_attribute_rule_on_hand_written_lists():
    lists = {"1": [10, 20, 30], "2": [20, 31], "3": [11], "4": [], "5": [12, 20, 30, 20, 32], "6": [30]}
    assert brand_and_category(lists) == {
        "1": ("10", "30"),  # brand first, the last id is the most specific category
        "2": (None, "31"),  # 20 stands after a brand elsewhere: a category, so no brand here
        "3": ("11", None),  # only ever first: a brand, and no category kept
        "4": (None, None),
        "5": ("12", "32"),  # two paths: the last one's leaf
        "6": (None, "30"),
    }


def test_csv_orders_by_timestamp_and_keeps_file_order_on_ties(tmp_path):
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"item_id": x}) + "\n" for x in "abcdef"))
    (tmp_path / "interactions.csv").write_text(
        "user,item,timestamp\nu2,c,5\nu1,b,20\nu1,a,10.5\nu2,d,5\nu1,c,30\nu2,e,1\nu1,f,20\n")
    data = load_dataset(tmp_path)
    assert data.sequences == {"u2": ["e", "c", "d"], "u1": ["a", "b", "f", "c"]}
    assert data.item_ids == list("abcdef") and data.dropped_users == 0


def test_import_writes_a_folder_that_reads_back_the_same(folders, tmp_path):
    """``dgr2 data import``'s writer: the anonymous mapping becomes named fields a user can edit; read
    back, the folder gives the same catalog, candidate lists and prompts (only the data hash differs)."""
    src = load_dataset(folders["anonymous"])
    written = write_layout(tmp_path / "out", src.sequences, list(src.catalog.items.values()))
    assert [p.name for p in written] == ["interactions.csv", "items.jsonl"]
    first = json.loads((tmp_path / "out" / "items.jsonl").read_text().splitlines()[0])
    assert set(first) == {"item_id", "title", "brand", "category"}
    back = load_dataset(tmp_path / "out")
    assert back.layout == "csv" and back.dropped_users == 0
    assert back.sequences == src.sequences and back.item_ids == src.item_ids
    assert list(back.catalog.items.values()) == list(src.catalog.items.values())
    vocab = Vocab(build_tokenizer(src.catalog))
    a, b = (eval_examples(d.sequences, d.item_ids, "test", 10, 1) for d in (src, back))
    assert [e.candidates for e in a] == [e.candidates for e in b]
    assert [encode(vocab, src, e).ids for e in a] == [encode(vocab, back, e).ids for e in b]
    with pytest.raises(DataError, match="already holds interactions.csv, items.jsonl"):
        write_layout(tmp_path / "out", src.sequences, list(src.catalog.items.values()))


# ----------------------------------------------------------------------------- bad input, one precise line
def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _csv(tmp_path):
    return write_csv(tmp_path / "d")


def _s3(tmp_path, named=False):
    return write_s3rec(tmp_path / "d", named=named)


BAD = {
    "non-numeric timestamp": (
        _csv, lambda d: _edit(d / "interactions.csv", "1,P0005,1400432000", "1,P0005,yesterday"),
        "interactions.csv line 2, field timestamp: 'yesterday"),
    "item missing from the table": (
        _csv, lambda d: _edit(d / "interactions.csv", "\n1,P0005", "\n1,NOPE"),
        "interactions.csv line 2, field item: item 'NOPE' is not in items.jsonl"),
    "header without timestamp": (
        _csv, lambda d: _edit(d / "interactions.csv", "user,item,timestamp", "user,item,time"),
        "interactions.csv line 1: the header lacks timestamp"),
    "empty user": (
        _csv, lambda d: _edit(d / "interactions.csv", "\n1,P0005", "\n,P0005"), "interactions.csv line 2, field user"),
    "csv without item table": (
        _csv, lambda d: (d / "items.jsonl").unlink(), "has interactions.csv but lacks items.jsonl"),
    "item table line not JSON": (
        _csv, lambda d: _edit(d / "items.jsonl", '{"item_id": "P0002"', '{"item_id": P0002'),
        "items.jsonl line 2: not a JSON object"),
    "item table row without item_id": (
        _csv, lambda d: _edit(d / "items.jsonl", '"item_id": "P0003", ', ""),
        "items.jsonl line 3, field item_id: missing"),
    "item listed twice": (
        _csv, lambda d: _edit(d / "items.jsonl", '"item_id": "P0003"', '"item_id": "P0001"'),
        "items.jsonl line 3, field item_id: item P0001 is also on line 1"),
    "item id a token cannot hold": (
        _csv, lambda d: _edit(d / "items.jsonl", '"item_id": "P0003"', '"item_id": "P 3"'),
        "items.jsonl line 3, field item_id: item id 'P 3' holds whitespace"),
    "brand not a string": (
        _csv, lambda d: _edit(d / "items.jsonl", '"brand": "Acme"', '"brand": 7'),
        "items.jsonl line 4, field brand: expected a string or null"),
    "categories not paths": (
        lambda t: _s3(t, named=True),
        lambda d: _edit(d / "items.jsonl", '"categories": [[', '"categories": ["Toys", ['),
        "items.jsonl line 1, field categories: expected a list of category paths"),
    "s3rec item not an integer": (
        _s3, lambda d: _edit(d / f"{NAME}.txt", "\n2 ", "\n2 x"), f"{NAME}.txt line 2, field 2: item 'x"),
    "s3rec item missing from the attributes": (
        _s3, lambda d: _edit(d / f"{NAME}.txt", "1 ", "1 999 "),
        f"{NAME}.txt line 1, field 2: item 999 is not in {NAME}_item2attributes.json"),
    "s3rec user on two lines": (
        _s3, lambda d: _edit(d / f"{NAME}.txt", "\n2 ", "\n1 "), f"{NAME}.txt line 2, field 1: user 1 also has line 1"),
    "attributes not a list": (
        _s3, lambda d: _edit(d / f"{NAME}_item2attributes.json", '"3": [', '"3": {"a": ['),
        f"{NAME}_item2attributes.json line 1: not JSON"),
    "attribute list of objects": (
        _s3, lambda d: _edit(d / f"{NAME}_item2attributes.json", '"3": [', '"3": [{}, '),
        f"{NAME}_item2attributes.json, field attributes of item '3'"),
    "attributes without a sequence file": (
        _s3, lambda d: (d / f"{NAME}.txt").unlink(), f"lacks {NAME}.txt, its sequence file"),
    "sequence file without an item table": (
        _s3, lambda d: (d / f"{NAME}_item2attributes.json").unlink(),
        f"has {NAME}.txt but no item table: add {NAME}_item2attributes.json or items.jsonl"),
    "two data sets in one folder": (
        _s3, lambda d: (d / "Other_item2attributes.json").write_text("{}"), "holds several S3-Rec data sets"),
    "every user too short": (
        _csv, lambda d: (d / "interactions.csv").write_text("user,item,timestamp\nu,P0001,1\nu,P0002,2\n"),
        "interactions.csv: no user has 3 or more interactions"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_named_by_file_line_and_field(case, tmp_path):
    make, spoil, says = BAD[case]
    folder = make(tmp_path)
    spoil(folder)
    with pytest.raises(DataError) as err:
        load_dataset(folder)
    message = str(err.value)
    assert says in message and "\n" not in message and "docs/data.md" in message, message


def test_a_folder_that_is_not_one(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(tmp_path / "file")
    with pytest.raises(DataError, match="holds no data set: expected interactions.csv"):
        load_dataset(tmp_path)


def test_repeat_lift_and_the_attribute_report(folders):
    brand = {"1": "A", "2": "A", "3": "B", "4": None}
    # A: 3 of 6 interactions, repeated once in its 2 successors -> (1/2) / (3/6); B: never repeated
    assert repeat_lifts(brand, [["1", "2", "3"], ["3", "4", "1"]]) == {"A": 1.0, "B": 0.0}
    out = report(folders["anonymous"])
    rows = catalog_rows()
    _, ids = s3rec_attributes(rows)
    assert out["items"] == N_ITEMS and out["checked_against_names"] is None
    assert out["items_with_brand"] == sum(1 for r in rows if r["brand"] in ids) and out["brands"] == len(BRANDS)
    counts = [b["items"] for b in out["brand_position"]]
    assert counts == sorted(counts, reverse=True) and {b["attribute"] for b in out["brand_position"]} == {
        str(ids[b]) for b in BRANDS}
    carried = Counter(a for attrs in s3rec_attributes(rows)[0].values() for a in set(attrs))
    assert out["most_carried"][0] == {"attribute": str(max(carried, key=carried.get)), "items": max(carried.values())}
    with pytest.raises(DataError, match="reads anonymous attribute lists only"):
        report(folders["csv"])
