"""``dgr2 eval --score-report FILE``: the held-out item's served score by rank, and what re-sorting the
candidates by the raw expected gain would do to the metrics."""

import json

import pytest

from dgr2.cli import main as cli
from dgr2.model.engine import RankResult
from dgr2.model.guard import GuardReport
from dgr2.model_store import ModelStore
from dgr2.model_store.init import init_pair
from dgr2.recipe.evals.score_report import (
    ScoreReport,
    by_top_score,
    markdown_table,
    markdown_top_score_table,
    resorted_order,
)


def result(order, relevance, gains):
    report = GuardReport(True, False, 0, 0, 0, False, "none")
    return RankResult(order=order, relevance=relevance, report=report, reasoning="", prompt_tokens=1,
                      generated_tokens=1, forward_passes=1, expected_gain=gains)


def test_resorted_order_by_expected_gain_ties_keep_the_decoded_order():
    r = result([2, 0, 1, 3], [0.6, 0.6, 0.3, 0.1], [0.5, 0.3, 0.7, 0.5])
    assert resorted_order(r) == [2, 0, 3, 1]  # 0 and 3 tie at 0.5: 0 was decoded above 3


def test_report_by_rank_and_resorting():
    rep = ScoreReport(depth=3)
    rep.add(result([0, 1, 2], [0.9, 0.5, 0.2], [0.9, 0.5, 0.2]), target_slot=0)  # hit at 1, same re-sorted
    rep.add(result([1, 0, 2], [0.6, 0.6, 0.1], [0.7, 0.5, 0.1]), target_slot=0)  # rank 2; re-sorted: 1
    rep.add(result([2, 1, 0], [0.4, 0.3, 0.3], [0.3, 0.3, 0.4]), target_slot=1)  # rank 2 either way
    out = rep.summary()
    assert out["n"] == 3 and [row["hits"] for row in out["by_rank"]] == [1, 2, 0]
    one, two, three = out["by_rank"]
    assert one["score_hit"] == 0.9 and one["score_miss"] == pytest.approx((0.6 + 0.4) / 2)
    assert two["score_hit"] == pytest.approx((0.6 + 0.3) / 2) and two["score_miss"] == 0.5
    assert two["gain_hit"] == pytest.approx((0.7 + 0.3) / 2)
    assert three["score_hit"] is None and three["score_miss"] == pytest.approx(0.2)
    assert out["decoded"]["hr@1"] == pytest.approx(1 / 3) and out["resorted"]["hr@1"] == pytest.approx(2 / 3)
    assert out["resorted_minus_decoded"]["hr@1"]["diff"] == pytest.approx(1 / 3, abs=1e-6)
    assert out["resorted_same_rank"] == pytest.approx(2 / 3, abs=1e-6)
    assert out["monotone"] == {"raw_rises": pytest.approx(1 / 3, abs=1e-6), "served_rises": 0.0}
    assert all(row["hit_minus_miss"] is None for row in out["by_rank"])  # too few users on either side
    assert markdown_table(out).count("\n") == 2 + 3 - 1


def test_report_hit_minus_miss_and_its_standard_error():
    rep = ScoreReport(depth=2)
    for order, top, target in [([0, 1], [0.9, 0.2], 0), ([0, 1], [0.7, 0.2], 0),
                               ([0, 1], [0.5, 0.4], 1), ([0, 1], [0.3, 0.3], 1)]:
        rep.add(result(order, top, top), target_slot=target)
    first = rep.summary()["by_rank"][0]
    assert first["hit_minus_miss"] == pytest.approx(0.4) and first["hit_minus_miss_se"] == pytest.approx(0.141421)
    assert "+0.400 ± 0.141" in markdown_table(rep.summary())


def test_report_by_top_score_groups_users_by_their_rank1_score():
    rep = ScoreReport(depth=2)
    for top, target in [([0.95, 0.2], 0), ([0.3, 0.2], 1), ([0.9, 0.1], 0), ([0.4, 0.3], 0)]:
        rep.add(result([0, 1], top, top), target_slot=target)
    low, high = by_top_score(rep.users(), groups=2)
    assert (low["score_from"], low["score_to"], low["n"], low["hr@1"]) == (0.3, 0.4, 2, 0.5)
    assert (high["score_from"], high["score_to"], high["n"], high["hr@1"]) == (0.9, 0.95, 2, 1.0)
    assert len(rep.summary()["by_top_score"]) == 4  # quartiles by default (here one user each)
    assert markdown_top_score_table(rep.summary()).count("quartile") == 4


def test_eval_writes_the_score_report(tmp_path, synth, capsys):
    init_pair(ModelStore(tmp_path), "beauty-gr2", synth.catalog)
    path = tmp_path / "scores.json"
    for decoder in ("ar", "diffusion"):
        rc = cli(["eval", "--checkpoint", f"beauty-gr2:{decoder}", "--store", str(tmp_path), "--synthetic",
                  "--split", "test", "--candidates", "12", "--limit", "6", "--trace-len", "8", "--batch-size", "3",
                  "--score-report", str(path), "--json"])
        assert rc == 0
        out = json.loads(capsys.readouterr().out)
        rep = json.loads(path.read_text())
        assert out["score_report"] == str(path) and rep["n"] == out["n"] == 6
        assert rep["decoded"]["ndcg@10"] == out["ndcg@10"]  # the same guarded rankings
        assert rep["settings"]["decoder"] == decoder and len(rep["by_rank"]) == 10
        assert sum(row["hits"] for row in rep["by_rank"]) <= 6
        assert rep["monotone"]["served_rises"] == 0.0
        assert len(rep["users"]) == 6 and sum(u["rank"] < 10 for u in rep["users"]) == sum(
            row["hits"] for row in rep["by_rank"])
        for row in rep["by_rank"]:
            for key in ("score_hit", "score_miss", "gain_hit"):
                assert row[key] is None or 0.0 <= row[key] <= 1.0


def test_score_report_refuses_baselines_and_resume_files(tmp_path):
    with pytest.raises(SystemExit, match="score-report"):
        cli(["eval", "--baseline", "pop", "--synthetic", "--score-report", str(tmp_path / "s.json")])
    with pytest.raises(SystemExit, match="score-report"):
        cli(["eval", "--checkpoint", "beauty-gr2:ar", "--synthetic", "--resume-file", str(tmp_path / "r.jsonl"),
             "--score-report", str(tmp_path / "s.json")])
