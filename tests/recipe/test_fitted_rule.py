"""A catalog's own evidence rule: `dgr2 fit-rule --out` writes it into a data folder, AR training on that
folder writes its traces by it and keeps it in config.json, later stages and evals follow the checkpoint's
rule, and a folder whose rule disagrees with the model's is refused by name."""

import argparse
import json
from dataclasses import replace

import pytest

from dgr2.cli import main as cli
from dgr2.model.config import ModelConfig
from dgr2.recipe.data import RULE_FILE, DataError, eval_examples, load_dataset
from dgr2.recipe.evaluate import baseline_ranks
from dgr2.recipe.formats.export import write_layout
from dgr2.recipe.sft import encode, trace_rule
from dgr2.recipe.traces import RULE_V3, RULE_V4, EvidenceRule, rule_for

# a rule far from RULE_V4: popularity decides, brand and category barely count
POPULAR = EvidenceRule(brand=0.1, cat=0.1, co=0.1, pop=5.0, edges=(5, 10, 15, 20, 25, 30, 35, 40, 45),
                       co_strength=True)


def test_a_rule_round_trips_and_a_bad_one_is_refused_by_field():
    assert EvidenceRule.from_dict(RULE_V4.to_dict()) == RULE_V4
    assert EvidenceRule.from_dict(json.loads(json.dumps(POPULAR.to_dict()))) == POPULAR
    bad = POPULAR.to_dict()
    del bad["pop"]
    with pytest.raises(ValueError, match="rule.json: missing field 'pop'"):
        EvidenceRule.from_dict(bad, "rule.json")
    with pytest.raises(ValueError, match="'edges' must be 1 to 9 increasing"):
        EvidenceRule.from_dict({**POPULAR.to_dict(), "edges": [3, 2]})


def test_rule_for_takes_the_fitted_rule_of_the_same_prompt_version(tiny):
    _, vocab = tiny
    assert rule_for(vocab) == (RULE_V4 if vocab.co_strength else RULE_V3)
    same_version = replace(POPULAR, co_strength=vocab.co_strength)
    assert rule_for(vocab, same_version.to_dict()) == same_version
    with pytest.raises(ValueError, match="another prompt version"):
        rule_for(vocab, replace(POPULAR, co_strength=not vocab.co_strength).to_dict())


@pytest.fixture()
def folder(tmp_path, synth):
    """The synthetic catalog as a data folder of the project's own layout."""
    write_layout(tmp_path / "data", synth.sequences, list(synth.catalog.items.values()))
    return tmp_path / "data"


def test_fit_rule_out_gives_a_data_folder_its_rule(folder, capsys):
    assert load_dataset(folder).rule is None
    assert cli(["fit-rule", "--data-dir", str(folder), "--candidates", "10", "--fit-users", "40",
                "--test-users", "40", "--test-seeds", "1", "--json", "--out", str(folder / RULE_FILE)]) == 0
    out = json.loads(capsys.readouterr().out)
    data = load_dataset(folder)
    assert data.rule == out["rule"] and EvidenceRule.from_dict(data.rule).pop == out["fit"]["weights"]["pop"]
    # the evidence baseline ranks by the folder's rule, and says so in its settings
    examples = eval_examples(data.sequences, data.item_ids, "test", 10, 1, limit=30)
    (folder / RULE_FILE).write_text(json.dumps(POPULAR.to_dict()))
    popular = load_dataset(folder)
    assert baseline_ranks("evidence", popular, examples) != baseline_ranks("evidence", replace(popular, rule=None),
                                                                           examples)


def test_a_damaged_rule_file_is_named(folder):
    (folder / RULE_FILE).write_text("{not json")
    with pytest.raises(DataError, match=f"{RULE_FILE}: not JSON"):
        load_dataset(folder)
    (folder / RULE_FILE).write_text(json.dumps({"brand": 1}))
    with pytest.raises(DataError, match=f"{RULE_FILE}: missing field"):
        load_dataset(folder)


def test_the_trace_follows_the_models_rule_and_a_disagreeing_folder_is_refused(tiny, synth):
    _, vocab = tiny
    popular = replace(POPULAR, co_strength=vocab.co_strength)
    ex = eval_examples(synth.sequences, synth.item_ids, "valid", 10, 12345, limit=1)[0]
    default = encode(vocab, synth, ex, 60)
    fitted = encode(vocab, synth, ex, 60, rule=popular)
    assert default.ids[:default.prompt_len] == fitted.ids[:fitted.prompt_len]  # same prompt
    assert default.ids != fitted.ids  # another rule, other strengths in the trace

    config = ModelConfig(evidence_rule=popular.to_dict())
    assert trace_rule(config, vocab, synth) == popular  # a folder without a rule: the model's own
    folder_with_another = argparse.Namespace(rule=RULE_V4.to_dict())
    with pytest.raises(SystemExit, match=f"{RULE_FILE} is not the evidence rule this model was trained with"):
        trace_rule(config, vocab, folder_with_another)
    assert trace_rule(config, vocab, argparse.Namespace(rule=popular.to_dict())) == popular


def test_ar_training_keeps_the_folders_rule_in_the_checkpoint(tmp_path, synth, monkeypatch):
    from dgr2.model_store import ModelStore, load_checkpoint
    from dgr2.recipe import train_ar

    popular = replace(POPULAR, co_strength=True)
    data = replace(synth, rule=popular.to_dict())
    monkeypatch.setattr(train_ar, "load_source", lambda *a, **k: data)
    p = argparse.ArgumentParser()
    train_ar.add_arguments(p)
    args = p.parse_args(["--synthetic", "--preset", "tiny", "--candidates", "5", "--trace-len", "12", "--steps", "2",
                         "--eval-every", "2", "--val-users", "4", "--store", str(tmp_path / "store"),
                         "--version", "ar-rule",
                         "--run-dir", str(tmp_path / "run"), "--fresh"])
    assert train_ar.run(args) == 0
    ckpt = load_checkpoint(ModelStore(tmp_path / "store").resolve("beauty-gr2", "ar"))
    assert ckpt.path.name == "ar-rule"  # --version names it
    assert ckpt.config.evidence_rule == popular.to_dict()
    assert json.loads((ckpt.path / "config.json").read_text())["evidence_rule"] == popular.to_dict()
