"""Prompt rendering and answer parsing, with every kind of invalid answer classified."""

from dataclasses import replace

import pytest

from dgr2.model.catalog import Catalog
from dgr2.model.prompt import parse_answer, render_completion, render_prompt
from dgr2.model.tokenizer import CO_TOKENS, MAX_SLOTS, Vocab, build_tokenizer, slot_token


def toks(vocab, prompt):
    return vocab.decode(prompt.ids).split()


def test_prompt_layout(tiny, catalog):
    _, vocab = tiny
    ids = catalog.ids()
    p = render_prompt(vocab, catalog, ids[:3], ids[10:12])
    t = toks(vocab, p)
    assert t[0] == "<history>" and t[-1] == "<think>"
    assert t[t.index("<candidates>") + 1] == "<c1>"
    assert f"<item:{ids[2]}>" in t and f"<item:{ids[10]}>" not in t  # candidates are shown by their evidence
    assert p.num_slots == 2 and p.unknown_items == [] and "<unk>" not in t
    linked = sum(any(catalog.linked(h, c) for h in ids[:3]) for c in ids[10:12])
    # history items: 4 tokens; candidates: slot, pop, 2 matches, link, and <coN> when linked (v4)
    assert len(t) == 1 + 3 * 4 + 2 + 2 * 5 + linked + 2


def test_history_keeps_most_recent(tiny, catalog):
    _, vocab = tiny
    ids = catalog.ids()
    p = render_prompt(vocab, catalog, ids[:10], ids[20:22], max_history=4)
    t = toks(vocab, p)
    assert p.history_used == 4
    assert f"<item:{ids[5]}>" not in t and f"<item:{ids[6]}>" in t and f"<item:{ids[9]}>" in t


def test_unknown_items_rendered_from_given_features(tiny, catalog):
    _, vocab = tiny
    brand = catalog.brands[1]
    cat = catalog.categories[2]
    cands = ["NOPE-1", {"id": "NOPE-2", "brand": brand, "category": cat, "title": "x"}, catalog.ids()[0]]
    p = render_prompt(vocab, catalog, ["NOPE-1"], cands)
    t = toks(vocab, p)
    assert p.unknown_items == ["NOPE-1", "NOPE-2"]
    assert t[1:5] == ["<unk_item>", "<unk_brand>", "<unk_cat>", "<pop0>"]
    assert t[t.index("<c1>") + 1: t.index("<c1>") + 5] == ["<pop0>", "<r:none>", "<r:none>", "<r:none>"]


def test_candidate_link_names_the_most_recent_linked_history_item(tiny, catalog):
    _, vocab = tiny
    ids = catalog.ids()
    history, cand = ids[:4], ids[30]
    links = {(ids[1], cand): 1, (ids[2], cand): 6}

    class Linked:  # the catalog, with the links of this test
        get, brand_index, category_index = catalog.get, catalog.brand_index, catalog.category_index
        has_link_counts = True

        @staticmethod
        def link_count(h, c):
            return links.get((h, c), 0)

    t = toks(vocab, render_prompt(vocab, Linked, history, [cand]))
    # ids[2] is the second most recent of four; 6 shared windows fall in the 5-8 bucket
    assert t[t.index("<c1>") + 4: t.index("<c1>") + 6] == ["<h2>", "<co4>"]
    v3 = Vocab(build_tokenizer(catalog, co_strength=False))
    t3 = toks(v3, render_prompt(v3, Linked, history, [cand]))
    assert t3[t3.index("<c1>") + 4: t3.index("<c1>") + 6] == ["<h2>", "</candidates>"]


def test_prompt_version_follows_the_vocabulary(catalog):
    v4, v3 = Vocab(build_tokenizer(catalog)), Vocab(build_tokenizer(catalog, co_strength=False))
    assert v4.co_strength and not v3.co_strength
    assert v4.extends(v3) and not v3.extends(v4) and len(v4) == len(v3) + len(CO_TOKENS)
    assert set(v4.output_ids) - set(v3.output_ids) == {v4.id(t) for t in CO_TOKENS}
    ids = catalog.ids()
    p4 = toks(v4, render_prompt(v4, catalog, ids[:6], ids[6:40]))
    p3 = toks(v3, render_prompt(v3, catalog, ids[:6], ids[6:40]))
    assert any(t in CO_TOKENS for t in p4)  # the synthetic catalog links some of them
    assert [t for t in p4 if t not in CO_TOKENS] == p3
    # a v4 vocabulary refuses a catalog without link counts (one written before they were kept)
    no_counts = Catalog([replace(catalog.get(i), link_counts=()) for i in ids])
    assert not no_counts.has_link_counts and no_counts.linked(*next((a, b) for a in ids for b in ids
                                                                     if catalog.linked(a, b)))
    with pytest.raises(ValueError, match="no link counts"):
        render_prompt(v4, no_counts, ids[:6], ids[6:40])
    assert toks(v3, render_prompt(v3, no_counts, ids[:6], ids[6:40])) == p3


def test_match_tokens_name_the_most_recent_history_item_with_the_same_brand_or_category(tiny, catalog):
    _, vocab = tiny
    brand, other_brand = catalog.brands[1], catalog.brands[3]
    cat, other_cat = catalog.categories[2], catalog.categories[4]
    history = [{"id": "H1", "brand": brand, "category": other_cat},
               {"id": "H2", "brand": brand, "category": cat},
               {"id": "H3", "brand": other_brand, "category": other_cat}]
    cands = [{"id": "X", "brand": brand, "category": cat}, {"id": "Y", "brand": other_brand, "category": cat},
             {"id": "Z"}]  # Z: no features, nothing can match
    t = toks(vocab, render_prompt(vocab, catalog, history, cands))
    window = {k: t[t.index(f"<c{k}>") + 2: t.index(f"<c{k}>") + 4] for k in (1, 2, 3)}
    assert window[1] == ["<h2>", "<h2>"]  # H2 is the most recent of both brand and category
    assert window[2] == ["<h1>", "<h2>"]
    assert window[3] == ["<r:none>", "<r:none>"]


def test_candidate_count_bounds(tiny, catalog):
    _, vocab = tiny
    with pytest.raises(ValueError):
        render_prompt(vocab, catalog, [], [])
    with pytest.raises(ValueError):
        render_prompt(vocab, catalog, [], [f"x{i}" for i in range(MAX_SLOTS + 1)])


def answer(vocab, body, close=True, trace=("<r:brand>",)):
    tail = ["</answer>", "<eos>"] if close else []
    return vocab.ids([*trace, "</think>", "<answer>", *body, *tail])


@pytest.mark.parametrize("body,close,expect", [
    (["<c2>", "<c1>", "<c3>"], True,
     dict(valid=True, duplicates=0, missing=0, out_of_set=0, malformed=False, wrong_fraction=0.0)),
    (["<c2>", "<c2>", "<c3>"], True,
     dict(valid=False, duplicates=1, missing=1, out_of_set=0, malformed=False, wrong_fraction=1 / 3)),
    (["<c2>", "<c3>"], True,
     dict(valid=False, duplicates=0, missing=1, out_of_set=0, malformed=False, wrong_fraction=1 / 3)),
    (["<c2>", "<c2>", "<c2>"], True, dict(valid=False, duplicates=2, missing=2, wrong_fraction=2 / 3)),
    (["<c2>"], True, dict(valid=False, duplicates=0, missing=2, wrong_fraction=2 / 3)),
    (["<c2>", "<c7>", "<c3>", "<c1>"], True,
     dict(valid=False, duplicates=0, missing=0, out_of_set=1, malformed=False, wrong_fraction=1 / 3)),
    (["<c2>", "<c1>", "<c3>"], False,
     dict(valid=False, duplicates=0, missing=0, out_of_set=0, malformed=True, wrong_fraction=1.0)),
    (["<c2>", "<r:cat>", "<c1>", "<c3>"], True, dict(valid=False, malformed=True, wrong_fraction=1.0)),
])
def test_parse_answer_classifies(tiny, body, close, expect):
    _, vocab = tiny
    parsed = parse_answer(vocab, answer(vocab, body, close), num_slots=3)
    for key, value in expect.items():
        assert getattr(parsed, key) == pytest.approx(value), key
    assert parsed.start == 2


@pytest.mark.parametrize("body,fault", [
    (["<c2>", "<c1>", "<c3>"], None),
    (["<c2>", "<c1>", "<c2>", "<c2>"], 2),  # the first repeat, not the second
    (["<c2>", "<c7>", "<c1>", "<c1>"], 1),  # a foreign slot before the repeat
    (["<c2>", "<c3>"], None),  # a short answer misses a slot without naming a wrong one
])
def test_parse_answer_finds_the_first_wrong_rank(tiny, body, fault):
    _, vocab = tiny
    ids = answer(vocab, body)
    parsed = parse_answer(vocab, ids, num_slots=3)
    assert parsed.first_fault == (None if fault is None else parsed.start + 1 + fault)
    if fault is not None:
        assert vocab.token(ids[parsed.first_fault]) == body[fault]


def test_parse_answer_without_answer_tag(tiny):
    _, vocab = tiny
    parsed = parse_answer(vocab, vocab.ids(["<r:brand>", "<c1>", "<eos>"]), num_slots=4)
    assert parsed.malformed and parsed.missing == 4 and parsed.start is None


def test_completion_round_trip(tiny):
    _, vocab = tiny
    completion = vocab.ids(render_completion(["<r:brand>", "<h1>"], [2, 0, 1]))
    parsed = parse_answer(vocab, completion, 3)
    assert parsed.valid and parsed.slots == [2, 0, 1]
    assert vocab.token(completion[-1]) == "<eos>" and slot_token(0) == "<c1>"
