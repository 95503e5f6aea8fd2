"""The validity term (``recipe.losses.banned_nll``): what it pays and where its pull fades."""

import math

import pytest
import torch

from dgr2.recipe.losses import ValidityTerm, banned_nll


def logits_with_banned_mass(p_banned: float, n: int = 10, banned: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of ``n`` logits whose ``banned`` first entries hold ``p_banned`` of the softmax."""
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, :banned] = True
    logits = torch.zeros(1, n)
    logits[0, :banned] = math.log(p_banned / banned) - math.log((1 - p_banned) / (n - banned))
    return logits.requires_grad_(True), mask


def pull_on_banned(p_banned: float, margin: float) -> float:
    logits, mask = logits_with_banned_mass(p_banned)
    banned_nll(logits, mask, margin).sum().backward()
    return float(logits.grad[mask].sum())


def test_the_plain_term_is_minus_log_of_the_allowed_mass():
    for p in (0.5, 0.02, 1e-4):
        logits, mask = logits_with_banned_mass(p)
        assert math.isclose(banned_nll(logits, mask).item(), -math.log(1 - p), rel_tol=1e-3, abs_tol=1e-6)


def test_a_margin_raises_the_banned_logits_inside_the_term():
    """softplus(z + margin), z the log-odds of the banned mass against the allowed."""
    for p in (0.3, 0.01):
        logits, mask = logits_with_banned_mass(p)
        z = math.log(p / (1 - p))
        expected = math.log1p(math.exp(z + 7.0))
        assert math.isclose(banned_nll(logits, mask, 7.0).item(), expected, rel_tol=1e-4)


def test_the_margin_keeps_the_pull_where_the_plain_term_has_faded():
    """At 1e-3 of the mass on banned slots (an answer of 100 ranks is still whole only ~90% of the time),
    the plain term barely pushes; with a margin of 7 it pushes at more than a third of its largest pull,
    and it fades in turn once the banned mass is well below exp(-7) ~ 9e-4."""
    plain, raised = pull_on_banned(1e-3, 0.0), pull_on_banned(1e-3, 7.0)
    assert 0 < plain < 2e-3
    assert raised > 0.3 and raised > 100 * plain
    assert pull_on_banned(1e-6, 7.0) < 2e-3


def test_rows_without_a_banned_slot_pay_nothing_whatever_the_margin():
    logits = torch.randn(3, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    assert torch.allclose(banned_nll(logits, mask, 7.0), torch.zeros(3), atol=1e-6)


def test_against_the_target_the_term_cannot_be_paid_by_leaving_the_slots():
    """Weighed against every allowed token, the term falls when mass moves off the banned slots onto a token
    that ends or breaks the answer; weighed against the target it falls only when the target rises above
    the banned slots."""
    mask = torch.tensor([[True, True, False, False, False]])  # two banned slots, the target, an other slot, </answer>
    target = torch.tensor([2])
    before = torch.tensor([[2.0, 1.0, 3.0, 0.0, 0.0]])
    to_end = before.clone()
    to_end[0, 4] = 6.0  # the model would rather close the answer
    to_target = before.clone()
    to_target[0, 2] = 6.0
    allowed = ValidityTerm(1.0, margin=4.0)
    vs_target = ValidityTerm(1.0, margin=4.0, against="target")
    assert allowed(to_end, mask) < 0.5 * allowed(before, mask)
    assert math.isclose(vs_target(to_end, mask, target).item(), vs_target(before, mask, target).item(), rel_tol=1e-6)
    assert vs_target(to_target, mask, target) < 0.5 * vs_target(before, mask, target)


def test_the_target_form_is_the_targets_share_against_the_raised_banned_slots():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.3]])
    mask = torch.tensor([[True, True, False, False]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(3.0) * (math.exp(0.5) + math.exp(-1.0))))
    assert math.isclose(banned_nll(logits, mask, 3.0, torch.tensor([2])).item(), expected, rel_tol=1e-5)


def test_a_term_against_the_target_refuses_to_run_without_one():
    with pytest.raises(ValueError, match="needs the target"):
        ValidityTerm(1.0, against="target")(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="against"):
        ValidityTerm(1.0, against="rank")
