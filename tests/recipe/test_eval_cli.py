"""``dgr2 eval``: one JSON object on stdout with the documented fields, for checkpoints and baselines."""

import json
import math
from pathlib import Path

import pytest

from dgr2.cli import main as cli
from dgr2.model_store import ModelStore
from dgr2.model_store.init import init_pair
from dgr2.recipe.data import eval_examples
from dgr2.recipe.evaluate import baseline_ranks

FIELDS = {"n", "ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10", "mrr", "valid_raw", "tokens_per_forward",
          "decode_tokens_per_s", "decoder", "split", "candidates", "neg_seed"}


def test_eval_json_for_both_decoders(tmp_path, synth, capsys):
    init_pair(ModelStore(tmp_path), "beauty-gr2", synth.catalog)
    for decoder in ("ar", "diffusion"):
        rc = cli(["eval", "--checkpoint", f"beauty-gr2:{decoder}", "--store", str(tmp_path), "--synthetic",
                  "--split", "test", "--candidates", "6", "--limit", "8", "--trace-len", "8", "--batch-size", "4",
                  "--json"])
        assert rc == 0
        out = json.loads(capsys.readouterr().out)
        assert set(out) >= FIELDS and out["n"] == 8 and out["decoder"] == decoder
        assert 0.0 <= out["valid_raw"] <= 1.0 and out["tokens_per_forward"] > 0
        assert set(out["trace"]) == {"entries_exact", "levels_exact", "answer_sorted"}
        assert all(0.0 <= v <= 1.0 for v in out["trace"].values())


def test_eval_baselines(synth, capsys):
    """The printed metrics are those of the baseline's ranks on the same candidate lists: PopRec's worked out
    here from the training counts (rank = candidates counted more often, plus those counted as often in an
    earlier slot), the evidence baseline's from ``baseline_ranks`` (checked by hand in test_evaluate.py)."""
    examples = eval_examples(synth.sequences, synth.item_ids, "test", 10, 12345)
    pop_ranks = []
    for ex in examples:
        mine = synth.counts.get(ex.target, 0)
        pop_ranks.append(sum(synth.counts.get(c, 0) > mine or (synth.counts.get(c, 0) == mine and k < ex.target_slot)
                             for k, c in enumerate(ex.candidates)))
    expected = {"pop": pop_ranks, "evidence": baseline_ranks("evidence", synth, examples)}
    assert expected["pop"] != expected["evidence"]
    for name, ranks in expected.items():
        assert cli(["eval", "--baseline", name, "--synthetic", "--candidates", "10", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["n"] == 200 and out["baseline"] == name
        ndcg10 = sum(1 / math.log2(r + 2) for r in ranks if r < 10) / len(ranks)
        hr1 = sum(r == 0 for r in ranks) / len(ranks)
        mrr = sum(1 / (r + 1) for r in ranks) / len(ranks)
        assert out["ndcg@10"] == pytest.approx(ndcg10, abs=1e-6) and out["hr@1"] == pytest.approx(hr1, abs=1e-6)
        assert out["mrr"] == pytest.approx(mrr, abs=1e-6) and out["hr@10"] == 1.0  # 10 candidates: always in


def test_eval_sample_reports_its_users_and_refuses_with_limit(capsys):
    assert cli(["eval", "--baseline", "evidence", "--synthetic", "--candidates", "10", "--sample", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 30 and out["sample"] == 30 and out["limit"] is None
    with pytest.raises(SystemExit):  # argparse: mutually exclusive
        cli(["eval", "--baseline", "evidence", "--synthetic", "--sample", "3", "--limit", "3", "--json"])
    with pytest.raises(SystemExit, match="sample must be"):
        cli(["eval", "--baseline", "evidence", "--synthetic", "--sample", "100000", "--json"])


def test_eval_unconstrained_decodes_without_the_answer_constraint(tmp_path, synth, capsys):
    """``--unconstrained``: the structural gap. A random-init model without the constraint almost never
    writes a valid answer; with it the answer grammar makes every answer valid."""
    init_pair(ModelStore(tmp_path), "beauty-gr2", synth.catalog)
    common = ["eval", "--checkpoint", "beauty-gr2:diffusion", "--store", str(tmp_path), "--synthetic", "--split",
              "test", "--candidates", "6", "--limit", "8", "--trace-len", "8", "--batch-size", "8", "--json"]
    valid = {}
    for flag in ([], ["--unconstrained"]):
        assert cli(common + flag) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["constrained"] is not bool(flag)
        valid[bool(flag)] = out["valid_raw"]
    assert valid[False] == 1.0 and valid[True] < 0.5
    with pytest.raises(SystemExit, match="answer constraint"):
        cli(common + ["--unconstrained", "--answer-threshold", "0"])


def test_a_baseline_writes_per_user_ranks_that_compare_pairs_with_a_model(tmp_path, synth, capsys):
    """``--resume-file`` with ``--baseline``: each user's rank once (a second run adds nothing), and
    ``dgr2 compare`` pairs the baseline with a checkpoint decoded on the same candidate lists."""
    init_pair(ModelStore(tmp_path), "beauty-gr2", synth.catalog)
    lists = ["--synthetic", "--split", "test", "--candidates", "6", "--sample", "8"]
    rule = str(tmp_path / "rule.jsonl")
    for _ in range(2):
        assert cli(["eval", "--baseline", "evidence", *lists, "--resume-file", rule, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    lines = [json.loads(line) for line in Path(rule).read_text().splitlines()]
    assert lines[0]["settings"]["baseline"] == "evidence" and "data_hash" in lines[0]["settings"]  # None: synthetic
    assert len(lines) == 2 and len(lines[1]["users"]) == 8 and lines[1]["valid"] == 8
    examples = eval_examples(synth.sequences, synth.item_ids, "test", 6, 12345, sample=8)
    assert dict(zip(lines[1]["users"], lines[1]["ranks"], strict=True)) == dict(
        zip([ex.user for ex in examples], baseline_ranks("evidence", synth, examples), strict=True))
    model = str(tmp_path / "ar.jsonl")
    assert cli(["eval", "--checkpoint", "beauty-gr2:ar", "--store", str(tmp_path), *lists, "--trace-len", "8",
                "--resume-file", model, "--json"]) == 0
    capsys.readouterr()
    assert cli(["compare", rule, model, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 8 and out["a"]["checkpoint"] == "baseline:evidence"
    assert out["ndcg@10"]["a"] == pytest.approx(printed["ndcg@10"], abs=1e-6)
    other = str(tmp_path / "other.jsonl")
    assert cli(["eval", "--baseline", "pop", *lists, "--resume-file", rule, "--json"]) == 2  # another eval's file
    assert "baseline 'evidence' there, 'pop' now" in capsys.readouterr().err
    head, record = Path(rule).read_text().splitlines()
    for path, data_hash in ((rule, "one"), (other, "another")):  # two baselines on two data folders
        with open(path, "w") as f:
            f.write(json.dumps({"settings": {**json.loads(head)["settings"], "data_hash": data_hash}}) + "\n"
                    + record + "\n")
    assert cli(["compare", rule, model]) == 0  # a checkpoint's file holds no data hash: its weights pin it
    capsys.readouterr()
    assert cli(["compare", rule, other]) == 2
    assert "different data: data_hash" in capsys.readouterr().err
