"""`dgr2 compare`: paired per-user differences between two evals' resume files."""

import json
import math

import pytest

from dgr2.cli import main as cli
from dgr2.recipe.evals.compare import paired
from dgr2.recipe.evals.eval_tally import ResumeFile, Tally

SETTINGS = {"checkpoint": "m", "split": "test", "candidates": 100, "neg_seed": 1}


def _resume(path, ranks: dict[str, int], **settings):
    f = ResumeFile(path, {**SETTINGS, **settings})
    users = list(ranks)
    for i in range(0, len(users), 2):  # two users a batch, as an eval appends them
        batch = users[i:i + 2]
        f.append(Tally(users=batch, ranks=[ranks[u] for u in batch]))
    return str(path)


def test_paired_difference_is_hand_computed():
    a = {"u1": 0, "u2": 9, "u3": 10}
    b = {"u1": 1, "u2": 0, "u3": 10, "u4": 0}  # u4 is not in A: left out
    out = paired(a, b)
    assert out["n"] == 3
    d = [1 / math.log2(3) - 1, 1 - 1 / math.log2(11), 0.0]
    mean = sum(d) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 2 / 3)
    assert out["ndcg@10"]["diff"] == pytest.approx(mean, abs=1e-6)
    assert out["ndcg@10"]["stderr"] == pytest.approx(se, abs=1e-6)
    # hr@1 moves from u1 to u2: no mean change, but a spread (per-user diffs -1, +1, 0)
    assert out["hr@1"] == {"a": pytest.approx(1 / 3, abs=1e-6), "b": pytest.approx(1 / 3, abs=1e-6),
                           "diff": 0.0, "stderr": pytest.approx(math.sqrt(1 / 3), abs=1e-6), "z": 0.0}
    assert out["hr@10"] == {"a": pytest.approx(2 / 3, abs=1e-6), "b": pytest.approx(2 / 3, abs=1e-6),
                            "diff": 0.0, "stderr": 0.0, "z": None}  # no user moved across 10
    assert out["mrr"]["b"] == pytest.approx((1 / 2 + 1 + 1 / 11) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="no user in common"):
        paired({"u1": 0}, {"u2": 0})


def test_cli_compares_files_part_way_and_refuses_other_lists(tmp_path, capsys):
    a = _resume(tmp_path / "a.jsonl", {"u1": 5, "u2": 5, "u3": 5, "u4": 5}, checkpoint="old")
    b = _resume(tmp_path / "b.jsonl", {"u1": 0, "u2": 0, "u3": 20}, checkpoint="new")
    with open(b, "a") as f:
        f.write('{"users": ["u4"], "ra')  # an eval stopped in mid-write: the cut line is left out
    assert cli(["compare", a, b, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n"], out["a"]["checkpoint"], out["b"]["checkpoint"], out["neg_seed"]) == (3, "old", "new", 1)
    assert out["hr@1"]["diff"] == pytest.approx(2 / 3, abs=1e-6)
    assert cli(["compare", a, b]) == 0
    assert "3 users in common" in capsys.readouterr().out
    other = _resume(tmp_path / "c.jsonl", {"u1": 0}, neg_seed=2)
    assert cli(["compare", a, other]) == 2
    assert "neg_seed 1" in capsys.readouterr().err
    assert cli(["compare", a, str(tmp_path / "missing.jsonl")]) == 2
    assert "no such eval resume file" in capsys.readouterr().err
    (tmp_path / "junk.jsonl").write_text("not json\n")
    assert cli(["compare", a, str(tmp_path / "junk.jsonl")]) == 2
    assert "no settings line" in capsys.readouterr().err


def test_training_curves_plot_from_run_logs(tmp_path):
    """dgr2.recipe.evals.plots draws a run folder's log.jsonl (loss, and the validation points)."""
    from dgr2.recipe.evals.plots import plot

    run = tmp_path / "cft"
    run.mkdir()
    rows = [{"stage": "cft", "step": 1, "loss": 2.0},
            {"stage": "cft", "step": 2, "loss": 1.5, "val_ndcg@10": 0.1, "val_valid_raw": 1.0}]
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "figs" / "curves.png"
    assert plot([str(run)], str(out)) == [["val NDCG@10", "val raw validity"]]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run that trains validity: its unconstrained curve and the probe's mass on banned slots beside
    rows[1]["val_unconstrained"] = {"valid_raw": 0.0, "banned_mass": {"ar": 0.3, "diffusion": 0.2}}
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert plot([str(run)], str(out))[0][-2:] == ["val raw validity, unconstrained", "mass on banned slots (AR view)"]
    # an RL run: the share of its groups without reward spread, where it was logged
    rows[1]["train_flat_groups"] = 0.5
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert plot([str(run)], str(out))[0][-1] == "RL groups with no reward spread"


def test_pairs_over_seeds_average_each_user_before_the_difference(tmp_path, capsys):
    """One pair per seed: each user's metric averaged over the seeds, the standard error over users."""
    a1 = _resume(tmp_path / "a1.jsonl", {"u1": 0, "u2": 0, "u3": 4}, checkpoint="old")
    b1 = _resume(tmp_path / "b1.jsonl", {"u1": 1, "u2": 0, "u3": 4}, checkpoint="new")
    a2 = _resume(tmp_path / "a2.jsonl", {"u1": 0, "u2": 2, "u3": 4, "u9": 0}, checkpoint="old", neg_seed=2)
    b2 = _resume(tmp_path / "b2.jsonl", {"u1": 0, "u2": 0, "u3": 0}, checkpoint="new", neg_seed=2)
    assert cli(["compare", a1, b1, a2, b2, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n"], out["neg_seeds"], "neg_seed" in out) == (3, [1, 2], False)  # u9 is on one seed only
    d = [(-1 + 0) / 2, (0 + 1) / 2, (0 + 1) / 2]  # HR@1 per user: seed 1, seed 2, averaged
    mean = sum(d) / 3
    assert out["hr@1"]["diff"] == pytest.approx(mean, abs=1e-6)
    assert out["hr@1"]["stderr"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in d) / 2 / 3), abs=1e-6)
    assert out["hr@1"]["a"] == pytest.approx((1 + 1 + 0 + 1 + 0 + 0) / 6, abs=1e-6)  # u1, u2, u3 on seed 1, then seed 2
    by_hand = paired({"u1": 0, "u2": 0, "u3": 4}, {"u1": 1, "u2": 0, "u3": 4},
                     ({"u1": 0, "u2": 2, "u3": 4}, {"u1": 0, "u2": 0, "u3": 0}))
    assert {k: out[k] for k in by_hand} == by_hand
    assert cli(["compare", a1, b1, a2, b2]) == 0
    assert "averaged over neg seeds 1, 2" in capsys.readouterr().out
    assert cli(["compare", a1, b1, a2]) == 2  # an odd file out
    assert "has no partner" in capsys.readouterr().err
    assert cli(["compare", a1, b1, a1, b1]) == 2  # the same seed twice would count its users twice
    assert "appears twice" in capsys.readouterr().err
    assert cli(["compare", a1, b1, b2, a2]) == 2  # sides swapped on the second seed
    assert "every pair is the same two rankers" in capsys.readouterr().err
