"""Reading a decoded trace back into entries (``model.reasoning``): what the recipe writes reads back
exactly, and what a model writes off format is kept, marked incomplete, without failing."""

import random

import pytest

from dgr2.model.reasoning import Evidence, read_trace
from dgr2.recipe.traces import RULE_V3, RULE_V4, evidence, render_trace, trace_entries


@pytest.mark.parametrize("rule", [RULE_V3, RULE_V4], ids=["v3", "v4"])
def test_the_recipes_traces_read_back_entry_by_entry(synth, rule):
    catalog = synth.catalog
    rng = random.Random(0)
    ids = catalog.ids()
    checked = relations = 0
    for user in list(synth.sequences)[:20]:
        history = synth.sequences[user][:-1]
        candidates = rng.sample(ids, 20)
        evs = evidence(catalog, history, candidates, rule)
        read = read_trace(render_trace(evs))
        assert read.stray_tokens == 0
        written = trace_entries(evs)
        assert [e.slot for e in read.entries] == [slot for slot, _ in written]
        by_slot = {e.slot: e for e in evs}
        for entry in read.entries:
            ev = by_slot[entry.slot]
            assert entry.complete and entry.strength == ev.level
            want = [(rel, r + 1) for rel, r in (("brand", ev.brand), ("category", ev.cat), ("co_occurrence", ev.co))
                    if r is not None]
            assert [(x.relation, x.history_recency) for x in entry.evidence] == want
            co = [x for x in entry.evidence if x.relation == "co_occurrence"]
            if co and rule.co_strength:
                assert f"<co{co[0].co_bucket}>" == ev.co_token
            elif co:
                assert co[0].co_bucket is None
            relations += len(want)
            checked += 1
    assert checked > 100 and relations > 10  # the synthetic users do share brands, categories and links


def test_entries_off_format_are_kept_and_marked():
    # from a real diffusion decode of the shipped model (2026-12-06): doubled slots, a stray strength,
    # a slot that opens and is cut by another
    text = ("<c24> <v1> <c24> <c25> <c25> <c26> <c26> <v0> <c27> <c27> <v0> <c86> <c28> <v1> <c28> "
            "<c29> <r:brand> <v2> <c29> <c30> <r:co> <h2> <co9> <v3> <v4> <c30> <c31> <r:cat>")
    read = read_trace(text.split())
    got = [(e.slot, e.strength, e.complete) for e in read.entries]
    assert got == [(23, 1, True), (24, None, False), (25, None, False), (26, None, False), (85, None, False),
                   (27, 1, True), (28, 2, False), (29, 3, False), (30, None, False)]
    assert read.stray_tokens == 2  # the <v0> after "<c26> <c26>" and after "<c27> <c27>"
    assert read.entries[7].evidence == [Evidence("co_occurrence", 2, 9)]
    assert read.entries[7].evidence[0].shared_windows() is None  # no <co9> bucket exists


def test_tokens_before_any_entry_are_stray_and_nothing_is_an_empty_trace():
    assert read_trace([]).entries == [] and read_trace([]).stray_tokens == 0
    read = read_trace(["<v3>", "<h1>", "<c2>", "<v5>", "<c2>"])
    assert read.stray_tokens == 2 and [(e.slot, e.strength, e.complete) for e in read.entries] == [(1, 5, True)]


def test_co_buckets_name_their_window_ranges():
    assert [Evidence("co_occurrence", 1, b).shared_windows() for b in range(1, 7)] == [
        (1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, None)]
