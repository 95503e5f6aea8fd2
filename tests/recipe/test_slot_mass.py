"""The validity probe: per answer rank, the probability on the slots the slot rule bans, teacher-forced."""

import torch

from dgr2.model.output_head import OutputHead
from dgr2.recipe.data import eval_examples
from dgr2.recipe.evals.slot_mass import banned_slot_mass
from dgr2.recipe.sft import encode

K = 8


def reference_ar_mass(model, vocab, synth, examples) -> tuple[float, int]:
    """The AR view computed another way: a plain causal pass over each clean sequence, and the mass on the
    slots its answer named before each rank."""
    head = OutputHead(model, vocab)
    total, n = 0.0, 0
    for ex in examples:
        enc = encode(vocab, synth, ex, model.config.trace_len)
        comp = enc.ids[enc.prompt_len:]
        first = comp.index(vocab.answer) + 1
        probs = head(model.hidden_states(torch.tensor([enc.ids]))[0]).softmax(-1)
        named: list[int] = []
        for j in range(first, len(comp)):
            slot = vocab.slot_of(comp[j])
            if slot is None:
                continue
            total += probs[enc.prompt_len - 1 + j, head.slot_cols[named]].sum().item()
            n += 1
            named.append(slot)
    return total / n, n


@torch.no_grad()
def test_the_ar_view_is_the_mass_on_slots_named_earlier_in_the_answer(tiny, synth):
    model, vocab = tiny
    examples = eval_examples(synth.sequences, synth.item_ids, "valid", K, 12345, limit=6)
    out = banned_slot_mass(model.eval(), vocab, synth, examples, block=4, batch_size=4)
    mass, n = reference_ar_mass(model, vocab, synth, examples)
    assert out["ar"]["all"]["positions"] == n == len(examples) * K  # every rank of every answer, once
    assert abs(out["ar"]["all"]["mass"] - mass) < 1e-4 and 0 < mass < 1  # a random model names used slots
    assert out["ar"]["1-10"]["positions"] == n  # K = 8: one band
    # the diffusion view: each rank from whichever noisy copy masks it, except a block's first position
    # (predicted from the clean stream, so it belongs to the AR view only)
    assert 0 < out["diffusion"]["all"]["positions"] <= n
    assert 0.0 <= out["diffusion"]["all"]["argmax_banned"] <= 1.0

