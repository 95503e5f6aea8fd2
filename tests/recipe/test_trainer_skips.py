"""run_stage: a stray non-finite step is skipped and logged, a stage that never trains stops
instead of publishing its untouched weights, and the schedule ends with the time budget (on a fake
clock that each step moves on by a fixed amount, so the step the budget runs out at is known)."""

import argparse
import json
from types import SimpleNamespace

import pytest
import torch

from dgr2.recipe import trainer
from dgr2.recipe.trainer import MAX_SKIPPED_IN_A_ROW, Dist, Stage, StageNotTraining, lr_at, run_stage


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def hidden_states(self, *args, **kwargs):
        return self.w


def run(tmp_path, nan_steps, steps, time_budget_min=None, step_s=0.0, schedule_to_budget=False, clock=None):
    model, published = Tiny(), []

    def loss(step, hidden):
        if clock is not None:
            clock.now += step_s  # the step "takes" step_s on the trainer's clock
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
def test_a_time_budget_stops_the_run_and_can_end_the_schedule(tmp_path, monkeypatch, to_budget):
    # 3 s steps against a 1 min budget on a fake clock: the budget is spent after exactly 20 of 1,000 steps
    clock = SimpleNamespace(now=1_000.0)
    monkeypatch.setattr(trainer, "time", SimpleNamespace(time=lambda: clock.now))
    model, published, log, outcome = run(tmp_path, nan_steps=set(), steps=1000, time_budget_min=1.0, step_s=3.0,
                                         schedule_to_budget=to_budget, clock=clock)
    assert outcome is None and len(log) == 20 and published == [20]
    lrs = [r["lr"] for r in log]
    assert lrs == sorted(lrs, reverse=True)
    # step 20 is set from the budget fraction measured after step 19 (57 of 60 s) when the schedule follows it
    assert lrs[-1] == round(lr_at(19, 1000, 0.1, 0, 19 * 3 / 60 if to_budget else 0.0), 7)
    if to_budget:  # decayed near its floor (base 0.1, floor 0.01) by the end of the budget
        assert lrs[-1] < 0.1 * 0.2
    else:  # the schedule follows the 1,000 steps: barely moved
        assert lrs[-1] > 0.1 * 0.99


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """A run stopped after its last save logged steps past it; resumed, it drops them and logs them anew."""
    model = Tiny()
    stage = Stage("probe", model, lambda step, hidden: hidden().sum(), lambda: {"ndcg@10": 0.0, "valid_raw": 1.0},
                  lambda metrics, n: tmp_path / "published")
    args = argparse.Namespace(run_dir=str(tmp_path / "run"), fresh=False, time_budget_min=None,
                              schedule_to_budget=False, eval_every=1000, save_every=4)
    run_stage(stage, args, Dist(), steps=6, lr=0.1, warmup=0)  # saved at steps 4 and 6
    state_file = tmp_path / "run" / "state.pt"
    state = torch.load(state_file, weights_only=False)
    state["step"] = 4  # as if stopped after logging steps 5 and 6 but before the save at 6
    torch.save(state, state_file)
    run_stage(stage, args, Dist(), steps=8, lr=0.1, warmup=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
