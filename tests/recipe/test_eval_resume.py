"""``--resume-file``: an eval stopped part-way and run again decodes each user once and reports
exactly what one uninterrupted run reports; a file of another eval is refused by the setting."""

import json

import pytest

from dgr2.cli import main as cli
from dgr2.model.decoding import DecodeConfig
from dgr2.model.engine import Reranker
from dgr2.model_store import ModelStore
from dgr2.model_store.init import new_model
from dgr2.recipe.data import eval_examples
from dgr2.recipe.evals.eval_tally import ResumeError, ResumeFile
from dgr2.recipe.evaluate import evaluate

DECODE = DecodeConfig(max_new_tokens=16)
TIMING = ("decode_tokens_per_s", "decode_seconds")


class Counting(Reranker):
    """A reranker that counts the users it decodes and can stop after some batches."""

    def __init__(self, *args, stop_after=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoded, self.calls, self.stop_after = [], 0, stop_after

    def rank(self, requests):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.decoded += [r.history for r in requests]
        return super().rank(requests)


def same(a, b):
    return {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


@pytest.fixture()
def setup(synth, catalog):
    model, vocab = new_model(catalog, "tiny", seed=3)
    examples = eval_examples(synth.sequences, synth.item_ids, "test", num_candidates=6, neg_seed=5)[:12]

    def reranker(**kw):
        return Counting(model, vocab, catalog, "ar", DECODE, **kw)

    return reranker, examples


def test_a_stopped_eval_resumes_where_it_stopped(setup, tmp_path):
    reranker, examples = setup
    whole = evaluate(reranker(), examples, batch_size=4, progress=False)
    resume = ResumeFile(tmp_path / "r.jsonl", {"run": "x"})
    first = reranker(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(first, examples, batch_size=4, progress=False, resume=resume)
    assert len(first.decoded) == 8 and len((tmp_path / "r.jsonl").read_text().splitlines()) == 3
    second = reranker()
    resumed = evaluate(second, examples, batch_size=4, progress=False, resume=resume)
    assert len(second.decoded) == 4 and same(resumed, whole) and resumed["n"] == 12
    third = reranker()  # everything done: nothing decoded, the same result
    assert same(evaluate(third, examples, batch_size=4, progress=False, resume=resume), whole) and not third.decoded


def test_a_batch_cut_in_mid_write_is_decoded_again(setup, tmp_path):
    reranker, examples = setup
    whole = evaluate(reranker(), examples, batch_size=4, progress=False)
    path = tmp_path / "r.jsonl"
    resume = ResumeFile(path, {"run": "x"})
    with pytest.raises(KeyboardInterrupt):
        evaluate(reranker(stop_after=2), examples, batch_size=4, progress=False, resume=resume)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the second batch's line cut short
    again = reranker()
    assert same(evaluate(again, examples, batch_size=4, progress=False, resume=resume), whole)
    assert len(again.decoded) == 12 - 4


def test_a_file_of_another_eval_is_refused(setup, tmp_path):
    reranker, examples = setup
    path = tmp_path / "r.jsonl"
    evaluate(reranker(), examples[:4], batch_size=4, progress=False, resume=ResumeFile(path, {"neg_seed": 1}))
    with pytest.raises(ResumeError, match="neg_seed 1 there, 2 now"):
        evaluate(reranker(), examples[:4], batch_size=4, progress=False, resume=ResumeFile(path, {"neg_seed": 2}))
    with pytest.raises(ResumeError, match="data_hash not recorded there, 'abc' now"):  # a later pin
        evaluate(reranker(), examples[:4], batch_size=4, progress=False,
                 resume=ResumeFile(path, {"neg_seed": 1, "data_hash": "abc"}))
    with pytest.raises(ResumeError, match="holds 4 users this eval does not"):
        evaluate(reranker(), examples[4:8], batch_size=4, progress=False, resume=ResumeFile(path, {"neg_seed": 1}))
    (tmp_path / "other.jsonl").write_text('{"n": 3}\n')
    with pytest.raises(ResumeError, match="not an eval resume file"):
        ResumeFile(tmp_path / "other.jsonl", {}).load()


def test_cli_resume_file(tmp_path, synth, capsys):
    from dgr2.model_store.init import init_pair

    init_pair(ModelStore(tmp_path / "store"), "beauty-gr2", synth.catalog)
    args = ["eval", "--checkpoint", "beauty-gr2:ar", "--store", str(tmp_path / "store"), "--synthetic",
            "--candidates", "6", "--limit", "6", "--trace-len", "8", "--batch-size", "3", "--json",
            "--resume-file", str(tmp_path / "r.jsonl")]
    assert cli(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli(args) == 0  # everything is in the file: same metrics, nothing decoded again
    assert same(json.loads(capsys.readouterr().out), first)
    with pytest.raises(SystemExit, match="neg_seed 12345 there, 7 now"):
        cli([*args, "--neg-seed", "7"])


def test_eval_all_users_script_runs_each_seed_once(tmp_path, synth):
    """scripts/eval_all_users.sh: one JSON per seed and their summary; run again, it decodes nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from dgr2.model_store.init import init_pair

    init_pair(ModelStore(tmp_path / "store"), "beauty-gr2", synth.catalog)
    script = Path(__file__).resolve().parents[2] / "scripts" / "eval_all_users.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DGR2_DATA_DIR": str(tmp_path), "SEEDS": "1 2", "EVAL_BATCH": "3"}
    cmd = ["bash", str(script), "beauty-gr2:ar", str(tmp_path / "out"), "--store", str(tmp_path / "store"),
           "--synthetic", "--candidates", "6", "--limit", "6", "--trace-len", "8"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    results = {s: json.loads((tmp_path / "out" / f"test-all-{s}.json").read_text()) for s in (1, 2)}
    assert [(r["n"], r["neg_seed"], r["batch_size"], r["split"]) for r in results.values()] == [
        (6, 1, 3, "test"), (6, 2, 3, "test")]
    resume = (tmp_path / "out" / "test-all-1.resume.jsonl").read_text()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=300).stdout
    assert out.splitlines()[:2] == [f"seed {s}: done ({tmp_path / 'out'}/test-all-{s}.json)" for s in (1, 2)]
    assert (tmp_path / "out" / "test-all-1.resume.jsonl").read_text() == resume
    # the mean ± standard error over the two seeds, from `dgr2 summarize`
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["n"] == 6
    assert summary["metrics"]["ndcg@10"]["per_seed"] == [results[1]["ndcg@10"], results[2]["ndcg@10"]]
    assert "seeds 1, 2" in out


def test_a_checkpoint_eval_pins_its_data_folder(tmp_path, synth, capsys):
    """Two folders of the same catalog (here the same items, one user's history shortened) are two evals:
    the second is refused by the data hash, and `dgr2 compare` refuses to pair them."""
    from dgr2.model_store.init import init_pair
    from dgr2.recipe.formats.export import write_layout

    init_pair(ModelStore(tmp_path / "store"), "beauty-gr2", synth.catalog)
    items = list(synth.catalog.items.values())
    write_layout(tmp_path / "one", synth.sequences, items)
    user, seq = next((u, s) for u, s in synth.sequences.items() if len(s) > 4)
    write_layout(tmp_path / "two", {**synth.sequences, user: seq[1:]}, items)
    args = ["eval", "--checkpoint", "beauty-gr2:ar", "--store", str(tmp_path / "store"), "--candidates", "6",
            "--limit", "3", "--trace-len", "8", "--batch-size", "3", "--json"]
    for name in ("one", "two"):
        assert cli([*args, "--data-dir", str(tmp_path / name), "--resume-file", str(tmp_path / f"{name}.jsonl")]) == 0
    heads = [json.loads((tmp_path / f"{n}.jsonl").read_text().splitlines()[0])["settings"] for n in ("one", "two")]
    assert heads[0]["data_hash"] and heads[0]["data_hash"] != heads[1]["data_hash"]
    capsys.readouterr()
    with pytest.raises(SystemExit, match="data_hash .* there, .* now"):
        cli([*args, "--data-dir", str(tmp_path / "two"), "--resume-file", str(tmp_path / "one.jsonl")])
    assert cli(["compare", str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl")]) != 0
    assert "different data: data_hash" in capsys.readouterr().err
