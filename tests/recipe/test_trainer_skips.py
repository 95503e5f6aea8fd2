"""run_stage: a stray non-finite step is skipped and logged, a stage that never trains stops
instead of publishing its untouched weights, and the schedule ends with the time budget."""

import argparse
import json
import time

import pytest
import torch

from dgr2.recipe.trainer import MAX_SKIPPED_IN_A_ROW, Dist, Stage, StageNotTraining, lr_at, run_stage


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def hidden_states(self, *args, **kwargs):
        return self.w


def run(tmp_path, nan_steps, steps, time_budget_min=None, step_s=0.0, schedule_to_budget=False):
    model, published = Tiny(), []

    def loss(step, hidden):
        time.sleep(step_s)
        scale = float("nan") if step in nan_steps else 1.0
        return (hidden() * scale).sum()

    stage = Stage("probe", model, loss, lambda: {"ndcg@10": 0.0, "valid_raw": 1.0},
                  lambda metrics, n: published.append(n) or tmp_path / "published")
    args = argparse.Namespace(run_dir=str(tmp_path / "run"), fresh=True, time_budget_min=time_budget_min,
                              schedule_to_budget=schedule_to_budget, eval_every=1000, save_every=1000)
    outcome = None
    try:
        run_stage(stage, args, Dist(), steps=steps, lr=0.1, warmup=0)
    except StageNotTraining as e:
        outcome = e
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    return model, published, log, outcome


def test_a_stray_non_finite_step_is_skipped_and_logged(tmp_path):
    model, published, log, outcome = run(tmp_path, nan_steps={2}, steps=6)
    assert outcome is None and published == [6]
    assert [r.get("skipped", False) for r in log] == [False, False, True, False, False, False]
    assert torch.isfinite(model.w).all() and not torch.equal(model.w.detach(), torch.ones(3))


def test_a_stage_whose_every_step_is_non_finite_stops_unpublished(tmp_path):
    model, published, log, outcome = run(tmp_path, nan_steps=set(range(50)), steps=50)
    assert isinstance(outcome, StageNotTraining) and f"{MAX_SKIPPED_IN_A_ROW} steps in a row" in str(outcome)
    assert published == [] and torch.equal(model.w.detach(), torch.ones(3))
    assert len(log) == MAX_SKIPPED_IN_A_ROW and all(r["skipped"] for r in log)


def test_the_schedule_decays_over_steps_or_time_whichever_ends_first():
    assert lr_at(0, 100, 1.0, 10) == 0.1 and lr_at(9, 100, 1.0, 10) == 1.0  # linear warm-up
    assert lr_at(10, 100, 1.0, 10) == 1.0 and abs(lr_at(100, 100, 1.0, 10) - 0.1) < 1e-9
    assert abs(lr_at(55, 100, 1.0, 10) - 0.55) < 1e-9  # cosine midpoint: half-way to the 10% floor
    assert abs(lr_at(20, 100, 1.0, 10, time_fraction=0.5) - 0.55) < 1e-9  # half the budget spent
    assert abs(lr_at(20, 100, 1.0, 10, time_fraction=1.0) - 0.1) < 1e-9


@pytest.mark.parametrize("to_budget", [True, False])
def test_a_time_budget_stops_the_run_and_can_end_the_schedule(tmp_path, to_budget):
    # 0.05 s steps against a 1 s budget: stops after ~20 of 1,000 steps
    model, published, log, outcome = run(tmp_path, nan_steps=set(), steps=1000, time_budget_min=1 / 60,
                                         step_s=0.05, schedule_to_budget=to_budget)
    assert outcome is None and 5 <= len(log) <= 21 and published == [len(log)]
    lrs = [r["lr"] for r in log]
    assert lrs == sorted(lrs, reverse=True)
    if to_budget:  # decayed near its floor (base 0.1, floor 0.01) by the end of the budget
        assert lrs[-1] < 0.1 * 0.2
    else:  # the schedule follows the 1,000 steps: barely moved
        assert lrs[-1] > 0.1 * 0.99
