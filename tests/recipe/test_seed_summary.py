"""`dgr2 summarize`: mean ± standard error over seeds, and the refusal to average evals that differ."""

import json
import math

import pytest

from dgr2.cli import main as cli
from dgr2.recipe.evals.seed_summary import read_evals, summarize_seeds

BASE = {"checkpoint": "m", "decoder": "ar", "split": "test", "candidates": 100, "n": 4, "block_size": 32,
        "threshold": 0.9, "answer_threshold": None, "constrained": True, "causal_first_rank": True,
        "max_new_tokens": 528, "limit": None, "sample": None, "ndcg@5": 0.2, "hr@1": 0.1, "hr@5": 0.3,
        "hr@10": 0.4, "mrr": 0.25, "valid_raw": 1.0, "tokens_per_forward": 1.0}


def _eval(tmp_path, seed: int, ndcg10: float, **over) -> str:
    path = tmp_path / f"test-all-{seed}.json"
    path.write_text(json.dumps({**BASE, "neg_seed": seed, "ndcg@10": ndcg10, **over}))
    return str(path)


def test_mean_and_stderr_over_seeds_is_hand_computed(tmp_path, capsys):
    files = [_eval(tmp_path, 12345, 0.30), _eval(tmp_path, 1, 0.32), _eval(tmp_path, 2, 0.31)]
    summary = summarize_seeds(read_evals(files))
    assert summary["seeds"] == [12345, 1, 2] and summary["n"] == 4
    # values 0.30, 0.32, 0.31: mean 0.31, sample variance 1e-4, s.e. sqrt(1e-4 / 3)
    assert summary["metrics"]["ndcg@10"]["mean"] == pytest.approx(0.31, abs=1e-6)
    assert summary["metrics"]["ndcg@10"]["stderr"] == pytest.approx(math.sqrt(1e-4 / 3), abs=1e-6)
    assert summary["metrics"]["mrr"] == {"mean": 0.25, "stderr": 0.0, "per_seed": [0.25] * 3}
    assert cli(["summarize", *files, "--markdown", "AR v4"]) == 0
    row = capsys.readouterr().out.strip()
    assert row == "| AR v4 | 0.2000 ± 0.0000 | 0.3100 ± 0.0058 | 0.1000 ± 0.0000 | 0.3000 ± 0.0000 | " \
                  "0.4000 ± 0.0000 | 0.2500 ± 0.0000 |"


def test_reads_json_lines_and_a_single_seed_has_no_stderr(tmp_path, capsys):
    lines = tmp_path / "evals.jsonl"
    lines.write_text("\n".join(json.dumps({**BASE, "neg_seed": s, "ndcg@10": v}) for s, v in [(1, 0.3), (2, 0.5)]))
    assert cli(["summarize", str(lines), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["ndcg@10"]["mean"] == pytest.approx(0.4)
    assert cli(["summarize", _eval(tmp_path, 7, 0.3), "--markdown", "one"]) == 0
    assert "±" not in capsys.readouterr().out


@pytest.mark.parametrize("over, message", [
    ({"checkpoint": "other"}, "differ in checkpoint"),
    ({"n": 3}, "differ in n"),  # a seed stopped part-way is not averaged with finished ones
    ({"decoder": "diffusion"}, "differ in decoder"),
    ({"checkpoint": None, "baseline": "evidence"}, "differ in checkpoint"),
    ({"rule": {"brand": 2.0}}, "differ in rule"),  # the evidence rule of a folder that carries a fitted one
    ({"neg_seed": 1}, "seed appears twice"),
])
def test_refuses_evals_that_do_not_belong_together(tmp_path, capsys, over, message):
    a = _eval(tmp_path, 1, 0.3)
    b = tmp_path / "b.json"
    b.write_text(json.dumps({**BASE, "neg_seed": 2, "ndcg@10": 0.3, **over}))
    assert cli(["summarize", a, str(b)]) == 2
    assert message in capsys.readouterr().err


def test_baselines_are_named_and_two_baselines_are_not_averaged(tmp_path, capsys):
    pop = {"checkpoint": None, "decoder": None, "baseline": "pop"}
    files = [_eval(tmp_path, s, 0.13, **pop) for s in (12345, 1)]
    assert cli(["summarize", *files]) == 0
    assert capsys.readouterr().out.startswith("baseline pop, test split, 4 users")
    other = tmp_path / "evidence.json"
    other.write_text(json.dumps({**BASE, **pop, "baseline": "evidence", "neg_seed": 2, "ndcg@10": 0.31}))
    assert cli(["summarize", *files, str(other)]) == 2
    assert "differ in baseline" in capsys.readouterr().err


def test_clear_error_for_files_that_are_not_eval_results(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli(["summarize", str(bad)]) == 2
    assert "not a dgr2 eval JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"loss": 1.0}))
    assert cli(["summarize", str(bad)]) == 2
    assert "no neg_seed" in capsys.readouterr().err
    assert cli(["summarize", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
