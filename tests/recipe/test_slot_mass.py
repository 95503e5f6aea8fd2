"""The validity probe: per answer rank, the probability on the slots the slot rule bans, teacher-forced."""

import torch

from dgr2.model.output_head import OutputHead
from dgr2.recipe.data import eval_examples
from dgr2.recipe.evals.slot_mass import banned_slot_mass
from dgr2.recipe.sft import encode
from dgr2.recipe.traces import evidence, trace_entries, trace_strengths

K = 8


def reference_ar_mass(model, vocab, synth, examples) -> tuple[float, int, list[int], list[tuple[int, bool]]]:
    """The AR view computed another way: a plain causal pass over each clean sequence, the mass on the
    slots its answer named before each rank, where the top token is such a slot how many ranks back it
    was named, and per rank after the first (how many unnamed slots share its slot's strength, whether
    the top token was banned)."""
    head = OutputHead(model, vocab)
    total, n, back, ties = 0.0, 0, [], []
    for ex in examples:
        evs = evidence(synth.catalog, ex.history, ex.candidates)
        level = trace_strengths(evs, trace_entries(evs, model.config.trace_len))
        enc = encode(vocab, synth, ex, model.config.trace_len)
        comp = enc.ids[enc.prompt_len:]
        first = comp.index(vocab.answer) + 1
        probs = head(model.hidden_states(torch.tensor([enc.ids]))[0]).softmax(-1)
        named: list[int] = []
        for j in range(first, len(comp)):
            slot = vocab.slot_of(comp[j])
            if slot is None:
                continue
            row = probs[enc.prompt_len - 1 + j]
            total += row[head.slot_cols[named]].sum().item()
            n += 1
            top_col = int(row.argmax())
            for back_n, earlier in enumerate(reversed(named), start=1):
                if int(head.slot_cols[earlier]) == top_col:
                    back.append(back_n)
                    break
            if named:
                unnamed = [k for k in range(len(ex.candidates)) if k not in named]
                ties.append((sum(level.get(k, -1) == level.get(slot, -1) for k in unnamed),
                             top_col in {int(head.slot_cols[k]) for k in named}))
            named.append(slot)
    return total / n, n, back, ties


@torch.no_grad()
def test_the_ar_view_is_the_mass_on_slots_named_earlier_in_the_answer(tiny, synth):
    model, vocab = tiny
    examples = eval_examples(synth.sequences, synth.item_ids, "valid", K, 12345, limit=6)
    out = banned_slot_mass(model.eval(), vocab, synth, examples, block=4, batch_size=4)
    mass, n, back, ties = reference_ar_mass(model, vocab, synth, examples)
    assert out["ar"]["all"]["positions"] == n == len(examples) * K  # every rank of every answer, once
    assert abs(out["ar"]["all"]["mass"] - mass) < 1e-4 and 0 < mass < 1  # a random model names used slots
    assert out["ar"]["1-10"]["positions"] == n  # K = 8: one band
    # the diffusion view: each rank from whichever noisy copy masks it, except a block's first position
    # (predicted from the clean stream, so it belongs to the AR view only)
    assert 0 < out["diffusion"]["all"]["positions"] <= n
    assert 0.0 <= out["diffusion"]["all"]["argmax_banned"] <= 1.0
    # the repeats the AR view's top token makes, by how far back the slot was named
    assert back and sum(out["repeat_back"].values()) == len(back) == round(out["ar"]["all"]["argmax_banned"] * n)
    assert out["repeat_back"] == {"1": back.count(1), "2-5": sum(2 <= d <= 5 for d in back),
                                  "6-20": sum(6 <= d <= 20 for d in back), "21+": sum(d > 20 for d in back)}
    # the same positions by how many unnamed slots share the strength of the one to name; rank 1 apart
    by_tie = out["tie_open"]
    assert by_tie["target"] == {"positions": len(examples), "argmax_banned": 0.0}  # nothing named yet
    assert by_tie["21+"] == {"positions": 0, "argmax_banned": None}  # K = 8
    for label, (lo, hi) in (("1", (1, 1)), ("2-5", (2, 5)), ("6-20", (6, 20))):
        inside = [banned for open_, banned in ties if lo <= open_ <= hi]
        assert by_tie[label]["positions"] == len(inside)
        if inside:
            assert by_tie[label]["argmax_banned"] == round(sum(inside) / len(inside), 5)
    assert sum(b["positions"] for b in by_tie.values()) == n
    assert by_tie["1"]["positions"] >= len(examples)  # an answer's last rank has one slot left, of its own strength

