"""run_stage and non-finite gradients: a stray step is skipped and logged, a stage that never
trains stops instead of publishing its untouched weights."""

import argparse
import json

import torch

from recipe.trainer import MAX_SKIPPED_IN_A_ROW, Dist, Stage, StageNotTraining, run_stage


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def hidden_states(self, *args, **kwargs):
        return self.w


def run(tmp_path, nan_steps, steps):
    model, published = Tiny(), []

    def loss(step, hidden):
        scale = float("nan") if step in nan_steps else 1.0
        return (hidden() * scale).sum()

    stage = Stage("probe", model, loss, lambda: {"ndcg@10": 0.0, "valid_raw": 1.0},
                  lambda metrics, n: published.append(n) or tmp_path / "published")
    args = argparse.Namespace(run_dir=str(tmp_path / "run"), fresh=True, time_budget_min=None, eval_every=1000,
                              save_every=1000)
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
