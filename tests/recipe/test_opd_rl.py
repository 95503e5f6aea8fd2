"""OPD and RL losses on planted cases: the teacher's distribution lands on the student's own tokens,
the slot exclusions match the decoder's, and a GRPO step moves probability to the rewarded arm."""

import copy

import pytest
import torch

from dgr2.model.decoding import DecodeConfig, completion_budget
from dgr2.model.output_head import OutputHead
from dgr2.recipe.block_diffusion import collate_diffusion
from dgr2.recipe.data import eval_examples
from dgr2.recipe.distill import completion_index, distill_targets, kl_loss, teacher_logits
from dgr2.recipe.losses import ValidityTerm
from dgr2.recipe.policy import scored_outputs, token_logprobs
from dgr2.recipe.rollouts import Rollout, decode_rollouts
from dgr2.recipe.sft import Encoded, TrainStream, encode
from dgr2.recipe.train_rl import flat_share, group_advantages, grpo_loss

K, TRACE, S = 6, 20, 4


def rows_of(vocab, synth, n=2):
    exs = eval_examples(synth.sequences, synth.item_ids, "valid", K)[:n]
    return [encode(vocab, synth, ex, TRACE) for ex in exs]


def test_teacher_targets_are_the_teachers_causal_logits_at_each_predicted_token(tiny, synth):
    model, vocab = tiny
    rows = rows_of(vocab, synth)
    b = collate_diffusion(rows, S, vocab.mask, vocab.pad, torch.Generator().manual_seed(0), vocab)
    head = OutputHead(model, vocab)
    t_list = teacher_logits(model, head, rows, vocab.pad)
    t, t_ban = distill_targets(b, rows, t_list, vocab)
    index = completion_index(b, rows)
    assert t.shape[:2] == b.ids.shape and t_ban.shape == b.banned.shape
    for i, e in enumerate(rows):
        full = head(model.hidden_states(torch.tensor([e.ids]))[0])  # causal pass over prompt + completion
        for j in (b.weights[i] > 0).nonzero().squeeze(1).tolist():
            q = int(index[i, j])
            assert 0 <= q < len(e.ids) - e.prompt_len
            assert b.targets[i, j] == e.ids[e.prompt_len + q]  # the output's own target is token q
            torch.testing.assert_close(t[i, j], full[e.prompt_len - 1 + q], atol=1e-4, rtol=1e-4)


def arm(row: Encoded) -> Rollout:
    """A fixed rollout of ``row`` for grpo_loss, which reads only the row (the rewards come as advantages)."""
    return Rollout(row, target_slot=0, rank=20)


@torch.no_grad()
def self_distillation(model, vocab, synth, seed: int):
    """The model as its own teacher on two rows: (rows, batch, head, teacher logits, teacher bans, hidden states)."""
    rows = rows_of(vocab, synth)
    b = collate_diffusion(rows, S, vocab.mask, vocab.pad, torch.Generator().manual_seed(seed), vocab)
    head = OutputHead(model, vocab)
    t, t_ban = distill_targets(b, rows, teacher_logits(model, head, rows, vocab.pad), vocab)
    return rows, b, head, t, t_ban, model.hidden_states(b.ids, positions=b.positions, mask=b.mask)


def test_kl_is_zero_on_the_clean_stream_when_student_is_teacher_and_positive_on_masked_outputs(tiny, synth):
    model, vocab = tiny
    rows, b, head, t, t_ban, h = self_distillation(model, vocab, synth, seed=1)
    clean = copy.copy(b)
    clean.weights = b.weights.clone()
    clean.weights[:, max(len(e.ids) for e in rows):] = 0  # keep only the clean stream
    for i, e in enumerate(rows):
        clean.weights[i, len(e.ids):] = 0
    assert float(kl_loss(head, h, clean, t, t_ban, clean.weights.sum())) < 1e-5
    noisy = copy.copy(b)
    noisy.weights = b.weights - clean.weights
    assert float(kl_loss(head, h, noisy, t, t_ban, noisy.weights.sum())) > 1e-3  # masked context differs


@pytest.mark.parametrize("reverse", [False, True])
def test_kl_gradients_are_finite_and_nonzero_in_both_directions(tiny, synth, reverse):
    """Slot exclusions put -inf logits in both distributions; neither direction may turn them into
    NaN gradients (the training loop skips non-finite steps, so such a loss never trains)."""
    model, vocab = tiny
    student = copy.deepcopy(model)
    rows = rows_of(vocab, synth)
    b = collate_diffusion(rows, S, vocab.mask, vocab.pad, torch.Generator().manual_seed(1), vocab)
    t, t_ban = distill_targets(b, rows, teacher_logits(model, OutputHead(model, vocab), rows, vocab.pad), vocab)
    assert bool((b.banned | t_ban)[b.weights > 0].any())  # the case under test: some slots are banned
    head = OutputHead(student, vocab, differentiable=True)
    h = student.hidden_states(b.ids, positions=b.positions, mask=b.mask)
    kl_loss(head, h, b, t, t_ban, b.weights.sum(), reverse=reverse).backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0

def test_one_step_estimate_scores_every_completion_token_exactly_once(tiny, synth):
    _, vocab = tiny
    rows = rows_of(vocab, synth)
    b = collate_diffusion(rows, S, vocab.mask, vocab.pad, torch.Generator().manual_seed(2), vocab)
    sel = scored_outputs(b, rows, S)
    index = completion_index(b, rows)
    for i, e in enumerate(rows):
        scored = sorted(index[i][sel[i]].tolist())
        assert scored == list(range(len(e.ids) - e.prompt_len))


def test_rollouts_are_valid_training_rows(tiny, synth):
    model, vocab = tiny
    stream = TrainStream(vocab, synth, K, TRACE, seed=0)
    cfg = DecodeConfig(max_new_tokens=completion_budget(TRACE, K), block_size=S, temperature=1.0, seed=3)
    rolls = decode_rollouts(model, vocab, stream, stream.examples(0, 2), cfg, repeats=3)
    assert len(rolls) == 6
    for r in rolls:
        assert r.row.ids[: r.row.prompt_len][-1] == vocab.think and len(r.row.ids) > r.row.prompt_len
        assert 0.0 <= r.ndcg10 <= 1.0 and r.reward(0.5) <= r.ndcg10


def test_group_advantages_are_standardised_within_each_group():
    a = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 0.0]), group=2)
    torch.testing.assert_close(a, torch.tensor([1.0, -1.0, 0.0, 0.0, 1.0, -1.0]), atol=1e-4, rtol=0)


def test_reward_cutoff_pays_ranks_past_ten_only_when_asked():
    import math

    r = Rollout(None, target_slot=0, rank=20, wrong_fraction=0.1)
    assert r.ndcg10 == 0.0 and r.reward(0.5) == pytest.approx(-0.05)
    assert r.reward(0.5, cutoff=100) == pytest.approx(1 / math.log2(22) - 0.05)
    assert Rollout(None, 0, rank=3).reward(0.0) == Rollout(None, 0, rank=3).reward(0.0, cutoff=100)


def test_flat_share_counts_the_groups_with_no_reward_spread():
    rewards = torch.tensor([0.0, 0.0, 0.5, 0.5, 1.0, 0.0, 0.3, 0.3])
    assert flat_share(rewards, group=2) == 0.75
    assert flat_share(rewards, group=4) == 0.0


def test_grpo_step_moves_probability_to_the_rewarded_arm(tiny, synth):
    """Two arms: the same prompt answered with the target first (reward 1) or last (reward 0)."""
    base, vocab = tiny
    model, ref = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    good = rows_of(vocab, synth, 1)[0]
    answer = good.answer_start
    k = good.num_slots
    bad_ids = list(good.ids)
    bad_ids[answer: answer + k] = good.ids[answer + 1: answer + k] + [good.ids[answer]]  # target moved last
    bad = Encoded(bad_ids, good.prompt_len, answer, k)

    arms = [arm(good), arm(bad)]
    head, ref_head = OutputHead(model, vocab, differentiable=True), OutputHead(ref, vocab)

    def margin():
        b = collate_diffusion([good, bad], S, vocab.mask, vocab.pad, torch.Generator().manual_seed(5), vocab)
        sel = scored_outputs(b, [good, bad], S)
        with torch.no_grad():
            lp = token_logprobs(head, model.hidden_states(b.ids, positions=b.positions, mask=b.mask), b, sel)
        return float(lp[0].sum() - lp[1].sum())

    before = margin()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        loss, parts = grpo_loss(model, ref, head, ref_head, arms, group_advantages(torch.tensor([1.0, 0.0]), 2), S,
                                0.02, vocab, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert margin() > before + 0.1, (before, margin())


def test_a_token_the_row_excludes_scores_zero_not_minus_infinity(tiny, synth):
    """Rollouts can hold a slot the training row's exclusions rule out; it must not make the loss NaN."""
    model, vocab = tiny
    rows = rows_of(vocab, synth, 1)
    b = collate_diffusion(rows, S, vocab.mask, vocab.pad, torch.Generator().manual_seed(7), vocab)
    sel = scored_outputs(b, rows, S)
    b.banned[sel] = True  # every slot excluded everywhere: slot targets become impossible
    with torch.no_grad():
        lp = token_logprobs(OutputHead(model, vocab), model.hidden_states(b.ids, positions=b.positions, mask=b.mask),
                            b, sel)
    slot_target = torch.tensor([[vocab.slot_of(int(t)) is not None for t in r] for r in b.targets]) & sel
    assert slot_target.any() and torch.isfinite(lp).all() and (lp[slot_target] == 0).all()


def test_the_validity_term_adds_the_students_own_mass_on_banned_slots(tiny, synth):
    """With a validity weight, OPD's loss is the KL plus w x -log P_S(allowed) at the same outputs: the term
    the KL (taken over allowed slots) cannot see."""
    import torch.nn.functional as F

    model, vocab = tiny
    _, b, head, t, t_ban, h = self_distillation(model, vocab, synth, seed=2)
    with torch.no_grad():
        total = b.weights.sum()
        plain = kl_loss(head, h, b, t, t_ban, total)
        heavy = kl_loss(head, h, b, t, t_ban, total, validity=ValidityTerm(2.0))
        sel = b.weights > 0
        probs = F.softmax(head(h[sel]), -1)[:, head.slot_cols]
        allowed = 1 - (probs * b.banned[sel]).sum(-1)
        expected = plain + 2.0 * (-allowed.log() * b.weights[sel]).sum() / total
    assert bool(b.banned[sel].any()) and float(heavy) > float(plain)
    torch.testing.assert_close(heavy, expected, atol=1e-4, rtol=1e-4)


def test_unconstrained_rollouts_are_graded_by_the_share_of_ranks_the_guard_changed(tiny, synth):
    """Without the answer constraint the model's own answers can be invalid, and the reward says by how much;
    with it every rollout is valid and the penalty never acts."""
    model, vocab = tiny
    stream = TrainStream(vocab, synth, K, TRACE, seed=0)
    budget = completion_budget(TRACE, K)
    free = DecodeConfig(max_new_tokens=budget, block_size=S, temperature=1.0, seed=3, constrain_answer=False)
    rolls = decode_rollouts(model, vocab, stream, stream.examples(0, 2), free, repeats=3)
    assert any(not r.valid_raw for r in rolls)  # the case under test: an untrained model's own answers
    for r in rolls:
        assert r.valid_raw == (r.wrong_fraction == 0) and 0.0 <= r.wrong_fraction <= 1.0
        assert r.reward(0.5) == pytest.approx(r.ndcg10 - 0.5 * r.wrong_fraction)
    kept = DecodeConfig(max_new_tokens=budget, block_size=S, temperature=1.0, seed=3)
    assert all(r.valid_raw and r.wrong_fraction == 0 for r in
               decode_rollouts(model, vocab, stream, stream.examples(0, 2), kept, repeats=3))


def test_unconstrained_log_probabilities_are_the_whole_softmax(tiny, synth):
    """Rollouts decoded without the constraint are scored as they were sampled: a slot the row bans keeps
    its finite log-probability under the model's whole output softmax."""
    import torch.nn.functional as F

    model, vocab = tiny
    rows = rows_of(vocab, synth, 1)
    b = collate_diffusion(rows, S, vocab.mask, vocab.pad, torch.Generator().manual_seed(7), vocab)
    sel = scored_outputs(b, rows, S)
    b.banned[sel] = True  # every slot excluded: the constrained view scores slot targets 0
    head = OutputHead(model, vocab)
    with torch.no_grad():
        h = model.hidden_states(b.ids, positions=b.positions, mask=b.mask)
        free = token_logprobs(head, h, b, sel, constrained=False)
        whole = F.log_softmax(head(h[sel]), -1).gather(1, head.col_of[b.targets[sel]][:, None])[:, 0]
    torch.testing.assert_close(free[sel], whole)
    slot_target = torch.tensor([[vocab.slot_of(int(t)) is not None for t in r] for r in b.targets]) & sel
    assert slot_target.any() and (free[slot_target] < 0).all()


def test_unconstrained_grpo_moves_probability_off_a_repeated_slot(tiny, synth):
    """Two arms of one prompt: a valid answer, and the same answer with its second rank repeating the first
    (penalised by the reward). Scored without the constraint, as unconstrained rollouts are, GRPO lowers the
    repeated slot's probability under the model's whole softmax, the one an unconstrained decode samples."""
    base, vocab = tiny
    model, ref = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    good = rows_of(vocab, synth, 1)[0]
    answer = good.answer_start
    dup_ids = list(good.ids)
    dup_ids[answer + 1] = good.ids[answer]  # rank 2 names rank 1's slot again
    dup = Encoded(dup_ids, good.prompt_len, answer, good.num_slots)

    head, ref_head = OutputHead(model, vocab, differentiable=True), OutputHead(ref, vocab)

    def repeated_logprob() -> float:
        """The one-step score of the repeated token (completion index of rank 2), as GRPO takes it."""
        b = collate_diffusion([dup], S, vocab.mask, vocab.pad, torch.Generator().manual_seed(5), vocab)
        sel = scored_outputs(b, [dup], S)
        at = sel[0] & (completion_index(b, [dup])[0] == answer + 1 - dup.prompt_len)
        assert int(at.sum()) == 1
        with torch.no_grad():
            lp = token_logprobs(head, model.hidden_states(b.ids, positions=b.positions, mask=b.mask), b, sel,
                                constrained=False)
        return float(lp[0][at])

    before = repeated_logprob()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        loss, _ = grpo_loss(model, ref, head, ref_head, [arm(good), arm(dup)],
                            group_advantages(torch.tensor([1.0, 1.0 - 0.5 / good.num_slots]), 2), S, 0.02, vocab,
                            torch.Generator().manual_seed(step), constrained=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert repeated_logprob() < before - 0.1, (before, repeated_logprob())


def test_rollouts_cut_at_the_first_fault_end_on_the_first_repeated_or_foreign_slot(tiny, synth, monkeypatch):
    """``cut_at_first_fault``: a faulty answer's row ends with the token that made it invalid, so training sees
    the mistake from a valid prefix and nothing after it; a valid answer keeps its whole row; the reward still
    scores the whole answer. The decoder is replaced by fixed continuations, one of each kind."""
    import numpy as np

    from dgr2.model.decoding import SequenceResult
    from dgr2.recipe import rollouts as rollouts_module

    model, vocab = tiny
    stream = TrainStream(vocab, synth, K, TRACE, seed=0)
    slots = [f"<c{k}>" for k in range(1, K + 1)]
    bodies = {"valid": slots, "repeat": [slots[1], slots[0], slots[1], *slots[2:]],
              "foreign": [slots[0], "<c9>", *slots[1:]]}
    faults = {"valid": None, "repeat": 2, "foreign": 1}  # answer rank of the first wrong token

    def fixed(model, vocab, prompts, num_slots, cfg):
        out = []
        for body in bodies.values():
            ids = vocab.ids(["<r:brand>", "</think>", "<answer>", *body, "</answer>", "<eos>"])
            out.append(SequenceResult(ids, np.zeros((len(ids), K)), 1))
        return out

    monkeypatch.setattr(rollouts_module, "decode_diffusion", fixed)
    cfg = DecodeConfig(max_new_tokens=completion_budget(TRACE, K), block_size=S, constrain_answer=False)
    batch = stream.examples(0, 1)
    whole = decode_rollouts(model, vocab, stream, batch, cfg, repeats=3)
    cut = decode_rollouts(model, vocab, stream, batch, cfg, repeats=3, cut_at_first_fault=True)
    for kind, w, c in zip(bodies, whole, cut, strict=True):
        P = w.row.prompt_len
        assert (c.ndcg10, c.wrong_fraction, c.valid_raw) == (w.ndcg10, w.wrong_fraction, w.valid_raw)
        if faults[kind] is None:
            assert c.row.ids == w.row.ids and w.valid_raw
            continue
        answer_at = w.row.ids.index(vocab.id("<answer>"), P)
        assert c.row.ids == w.row.ids[: answer_at + 1 + faults[kind] + 1], kind
        assert vocab.token(c.row.ids[-1]) == bodies[kind][faults[kind]]
