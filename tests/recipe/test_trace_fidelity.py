"""Trace fidelity: the rule's own trace and answer score 1; each kind of deviation is counted."""

from dgr2.recipe.data import eval_examples
from dgr2.recipe.trace_fidelity import TraceFidelity, level_of, parse_entries
from dgr2.recipe.traces import evidence, render_trace, sft_target, trace_entries


def test_parse_entries_and_levels():
    toks = ["<c1>", "<v3>", "<c1>", "<c2>", "<r:cat>", "<h4>", "<v5>", "<c2>", "<c3>", "<v1>", "</think>"]
    e = parse_entries(toks)
    assert e == {"<c1>": ["<c1>", "<v3>", "<c1>"], "<c2>": ["<c2>", "<r:cat>", "<h4>", "<v5>", "<c2>"]}
    assert level_of(e["<c2>"]) == 5 and level_of(["<c3>", "<r:co>"]) == -1  # <c3> never closed


def test_the_rules_own_trace_and_answer_are_fully_faithful(synth):
    fid = TraceFidelity()
    for ex in eval_examples(synth.sequences, synth.item_ids, "valid", num_candidates=30)[:10]:
        evs = evidence(synth.catalog, ex.history, ex.candidates)
        trace, ranking = sft_target(evs, ex.target_slot, 400)
        fid.add(trace, trace_entries(evs, 400), ranking)
    assert fid.summary() == {"entries_exact": 1.0, "levels_exact": 1.0, "answer_sorted": 1.0}
    assert fid.reference == 300 and fid.ranks == 90


def test_deviations_are_counted(synth):
    ex = eval_examples(synth.sequences, synth.item_ids, "valid", num_candidates=30)[0]
    evs = evidence(synth.catalog, ex.history, ex.candidates)
    reference = trace_entries(evs, 400)
    trace, ranking = sft_target(evs, ex.target_slot, 400)
    # one strength changed: that entry and its level are wrong, nothing else
    i = next(i for i, t in enumerate(trace) if t.startswith("<v"))
    bumped = [*trace[:i], "<v9>" if trace[i] != "<v9>" else "<v0>", *trace[i + 1:]]
    fid = TraceFidelity()
    fid.add(bumped, reference, ranking)
    assert (fid.entries, fid.levels, fid.reference) == (29, 29, 30)
    # an answer sorted by increasing strength (ranks 2..10) is mostly unsorted
    levels = {e.slot: e.level for e in evs}
    worst = [ranking[0], *sorted(ranking[1:], key=lambda k: levels[k])]
    fid = TraceFidelity()
    fid.add(render_trace(evs, 400), reference, worst)
    assert fid.summary()["answer_sorted"] < 0.5 and fid.summary()["entries_exact"] == 1.0
