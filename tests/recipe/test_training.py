"""Training stages on planted synthetic preferences: tests that fail if a stage is broken.

Every user of this synthetic set buys only items of one brand or one category; with 5 candidates a
random ranking scores NDCG@10 = 0.59 (the mean of 1/log2(r+2) over r < 5).
"""

import argparse
import math

import pytest

from dgr2.recipe import evaluate as evaluate_module
from dgr2.recipe import train_ar, train_cft, train_opd, train_rl
from dgr2.recipe.synthetic import synthetic_data

K, TRACE, BLOCK = 5, 12, 4
RANDOM_NDCG = sum(1 / math.log2(r + 2) for r in range(K)) / K


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny AR model trained for ~30 s on the planted data, and the data itself."""
    data = synthetic_data(n_items=120, n_users=300, n_brands=12, n_categories=24, p_preferred=1.0)
    root = tmp_path_factory.mktemp("train")
    patch = pytest.MonkeyPatch()
    patch.setattr(evaluate_module, "load_source", lambda *a, **k: data)
    patch.setattr(train_ar, "load_source", lambda *a, **k: data)
    for module in (train_cft, train_opd, train_rl):
        patch.setattr(module, "load_source", lambda *a, **k: data)
    common = ["--synthetic", "--candidates", str(K), "--trace-len", str(TRACE), "--val-users", "100",
              "--store", str(root / "store"), "--batch-size", "16"]
    yield data, root, common
    patch.undo()


def parse(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def evaluate_ref(root, ref, decoder, data, grammar=True):
    from dgr2.model.decoding import DecodeConfig, completion_budget
    from dgr2.model.engine import Reranker
    from dgr2.model_store import ModelStore, load_checkpoint
    from dgr2.recipe.data import eval_examples
    from dgr2.recipe.evaluate import evaluate

    ckpt = load_checkpoint(ModelStore(root / "store").resolve("beauty-gr2", ref))
    cfg = DecodeConfig(max_new_tokens=completion_budget(TRACE, K), block_size=BLOCK, threshold=0.9,
                       answer_grammar=grammar)
    examples = eval_examples(data.sequences, data.item_ids, "valid", K, 12345, 100)
    return evaluate(Reranker(ckpt.model, ckpt.vocab, ckpt.catalog, decoder, cfg), examples, progress=False)


@pytest.fixture(scope="module")
def trained_ar(planted):
    data, root, common = planted
    args = parse(train_ar, [*common, "--preset", "tiny", "--steps", "600", "--lr", "3e-3", "--eval-every", "600",
                            "--run-dir", str(root / "ar"), "--fresh"])
    assert train_ar.run(args) == 0
    return evaluate_ref(root, "ar", "ar", data)


def test_ar_training_learns_the_planted_preference(trained_ar):
    assert trained_ar["valid_raw"] == 1.0
    assert trained_ar["ndcg@10"] > RANDOM_NDCG + 0.08, trained_ar


@pytest.fixture(scope="module")
def trained_cft(planted, trained_ar):
    data, root, common = planted
    # slot exclusions without the answer grammar, which would make every decode valid: the gap is then
    # what the model learned about the answer's structure (unconstrained, exclusion-trained models repeat
    # slots, so that would measure nothing)
    naive = evaluate_ref(root, "ar", "diffusion", data, grammar=False)
    args = parse(train_cft, [*common, "--from", "beauty-gr2:ar", "--steps", "300", "--lr", "2e-3",
                             "--block-size", str(BLOCK), "--eval-every", "300", "--run-dir", str(root / "cft"),
                             "--fresh"])
    assert train_cft.run(args) == 0
    return naive, evaluate_ref(root, "cft", "diffusion", data, grammar=False)


def test_cft_raises_raw_validity_over_naive_conversion(trained_cft):
    naive, cft = trained_cft
    assert cft["valid_raw"] > naive["valid_raw"] + 0.2, (naive, cft)


def test_opd_then_rl_run_end_to_end_and_keep_the_ranking(planted, trained_ar, trained_cft):
    """Short OPD and RL runs publish diffusion checkpoints that still rank above chance and stay valid."""
    data, root, common = planted
    _, cft = trained_cft
    opd_args = parse(train_opd, [*common, "--from", "beauty-gr2:cft", "--teacher", "beauty-gr2:ar", "--steps", "20",
                                 "--lr", "3e-4", "--eval-every", "20", "--run-dir", str(root / "opd"), "--fresh"])
    assert train_opd.run(opd_args) == 0
    opd = evaluate_ref(root, "opd", "diffusion", data)
    rl_args = parse(train_rl, [*common, "--from", "beauty-gr2:opd", "--steps", "10", "--batch-size", "4",
                               "--group", "4", "--eval-every", "10", "--run-dir", str(root / "rl"), "--fresh"])
    assert train_rl.run(rl_args) == 0
    rl = evaluate_ref(root, "rl", "diffusion", data)
    for m in (opd, rl):
        assert m["valid_raw"] >= cft["valid_raw"] - 0.1, (cft, m)
        assert m["ndcg@10"] > RANDOM_NDCG + 0.05, m


def test_ar_warm_start_begins_from_the_given_weights(planted, trained_ar, tmp_path):
    """``--init-from``: with a zero learning rate the warm-started model ranks exactly as its parent
    (a fresh initialisation would rank near chance); a checkpoint of another catalog is refused."""
    from dgr2.model_store import ModelStore
    from dgr2.model_store.init import init_pair
    from dgr2.recipe.synthetic import synthetic_data

    data, root, common = planted
    parent = ModelStore(root / "store").resolve("beauty-gr2", "ar")
    warm_common = [c if c != str(root / "store") else str(tmp_path / "store") for c in common]
    args = parse(train_ar, [*warm_common, "--init-from", str(parent), "--steps", "2", "--lr", "0",
                            "--eval-every", "2", "--run-dir", str(tmp_path / "warm"), "--fresh"])
    assert train_ar.run(args) == 0
    warm = evaluate_ref(tmp_path, "ar", "ar", data)
    assert warm["ndcg@10"] == trained_ar["ndcg@10"] and warm["valid_raw"] == trained_ar["valid_raw"]

    other = init_pair(ModelStore(tmp_path / "other"), "beauty-gr2", synthetic_data(n_items=50, n_users=40).catalog)
    args = parse(train_ar, [*warm_common, "--init-from", str(other["ar"]), "--steps", "1",
                            "--run-dir", str(tmp_path / "refused"), "--fresh"])
    with pytest.raises(SystemExit, match="vocabulary differs"):
        train_ar.run(args)


def test_validity_weight_moves_the_loss_from_plackett_luce_to_plain_cross_entropy(tiny):
    """0: excluded slots leave the softmax; 1: the plain cross-entropy (the model pays for mass on them)."""
    import torch
    import torch.nn.functional as F

    from dgr2.model.output_head import OutputHead
    from dgr2.model.tokenizer import MAX_SLOTS, slot_token
    from dgr2.recipe.losses import ValidityTerm
    from dgr2.recipe.train_ar import weighted_ce

    model, vocab = tiny
    head = OutputHead(model, vocab, differentiable=True)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(1, 6, model.config.hidden_size, generator=gen)
    targets = torch.tensor([vocab.ids([slot_token(k) for k in range(6)])])
    weights, total = torch.ones(1, 6), torch.tensor(6.0)
    banned = torch.zeros(1, 6, MAX_SLOTS, dtype=torch.bool)
    banned[0, 3:, :3] = True  # the last three steps may not repeat the first three slots
    cols = head.col_of[targets[0]]
    logits = head(h[0])
    plain = F.cross_entropy(logits, cols)
    masked = logits.clone()
    masked[3:, head.slot_cols[:3]] = float("-inf")
    luce = F.cross_entropy(masked, cols)
    with torch.no_grad():
        assert torch.allclose(weighted_ce(head, h, targets, weights, total, banned), luce, atol=1e-5)
        plain_term = weighted_ce(head, h, targets, weights, total, banned, ValidityTerm(1.0))
        assert torch.allclose(plain_term, plain, atol=1e-5)
        half = weighted_ce(head, h, targets, weights, total, banned, ValidityTerm(0.5))
        assert torch.allclose(half, (luce + plain) / 2, atol=1e-5) and luce < half < plain
        # validity weighs above the ranking
        heavy = weighted_ce(head, h, targets, weights, total, banned, ValidityTerm(3.0))
        assert torch.allclose(heavy, luce + 3 * (plain - luce), atol=1e-5) and heavy > plain


def test_cft_continues_a_conversion_in_its_own_blocks(planted, trained_cft, tmp_path):
    """Without --block-size, a diffusion start trains and stores its own block size."""
    from dgr2.model_store import ModelStore, load_checkpoint

    data, root, common = planted
    args = parse(train_cft, [*common, "--from", str(ModelStore(root / "store").resolve("beauty-gr2", "cft")),
                             "--steps", "2", "--eval-every", "2", "--val-users", "5",
                             "--store", str(tmp_path / "store"), "--run-dir", str(tmp_path / "run"), "--fresh"])
    assert train_cft.run(args) == 0
    assert load_checkpoint(ModelStore(tmp_path / "store").resolve("beauty-gr2", "cft")).config.block_size == BLOCK


def test_cft_answer_ties_are_the_parents_unless_given_and_saved_with_the_model(planted, trained_cft, tmp_path):
    """``--answer-ties slot`` trains answers whose equal strengths come in slot order and saves the choice in
    the checkpoint's config, which the next stage's stream follows; without the flag a run keeps its parent's."""
    from dgr2.model_store import ModelStore, load_checkpoint
    from dgr2.recipe.sft import TrainStream

    data, root, common = planted

    def cft(start: str, flags: list[str], name: str):
        args = parse(train_cft, [*common, "--from", start, "--steps", "2", "--eval-every", "2", "--val-users", "5",
                                 *flags, "--store", str(tmp_path / name), "--run-dir", str(tmp_path / f"run-{name}"),
                                 "--fresh"])
        assert train_cft.run(args) == 0
        return load_checkpoint(ModelStore(tmp_path / name).resolve("beauty-gr2", "cft"))

    parent = ModelStore(root / "store").resolve("beauty-gr2", "cft")
    assert load_checkpoint(parent).config.answer_ties == "shuffled"
    by_slot = cft(str(parent), ["--answer-ties", "slot"], "slot")
    assert by_slot.config.answer_ties == "slot"
    assert cft(str(by_slot.path), [], "kept").config.answer_ties == "slot"
    assert TrainStream.for_model(by_slot.vocab, data, K, by_slot.config, seed=0).ties == "slot"


def test_validity_weight_refuses_negative_values_by_name():
    with pytest.raises(SystemExit):
        parse(train_cft, ["--validity-weight", "-1"])
    with pytest.raises(SystemExit):
        parse(train_cft, ["--validity-weight", "nan"])
    assert parse(train_cft, ["--validity-weight", "4"]).validity_weight == 4.0


def test_cft_with_a_validity_weight_logs_the_unconstrained_curve(planted, trained_ar, tmp_path):
    """Each validation of a run that trains validity also decodes without the constraint: the log's curve of
    learned validity, beside the constrained one (a run without the weight logs no such record); the
    published manifest records the term's weight, margin and what it weighs the banned slots against."""
    import json

    from dgr2.model_store import ModelStore

    data, root, common = planted
    parent = str(ModelStore(root / "store").resolve("beauty-gr2", "ar"))
    logs, terms = {}, {}
    for weight, shape in (("3", ["--validity-margin", "6", "--validity-against", "target"]), ("0", [])):
        run_dir, store = tmp_path / f"cft-{weight}", tmp_path / f"store-{weight}"
        args = parse(train_cft, [*common, "--from", parent, "--steps", "4", "--lr", "1e-3",
                                 "--block-size", str(BLOCK), "--eval-every", "2", "--val-users", "10",
                                 "--validity-weight", weight, *shape, "--store", str(store),
                                 "--run-dir", str(run_dir), "--fresh"])
        assert train_cft.run(args) == 0
        logs[weight] = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        manifest = json.loads((ModelStore(store).resolve("beauty-gr2", "cft") / "manifest.json").read_text())
        terms[weight] = manifest["metrics"]["validity"]
    assert terms == {"3": {"weight": 3.0, "margin": 6.0, "against": "target"},
                     "0": {"weight": 0.0, "margin": 0.0, "against": "allowed"}}
    validated = [r for r in logs["3"] if "val_ndcg@10" in r]
    assert [r["step"] for r in validated] == [2, 4]
    for r in validated:
        free = r["val_unconstrained"]
        assert 0.0 <= free["valid_raw"] <= 1.0 and set(free["invalid_raw"]) >= {"duplicates", "missing"}
        assert free["ndcg@10_before_repair"] <= free["ndcg@10"] + 1e-9  # the guard's repair never hurts here
        assert set(free["banned_mass"]) == {"ar", "diffusion"} and 0 <= free["banned_mass"]["ar"] < 1
    assert all("val_unconstrained" not in r for r in logs["0"])


def test_cut_at_first_fault_without_unconstrained_rollouts_is_refused_by_name():
    from dgr2.errors import UserError

    with pytest.raises(UserError, match="--unconstrained-rollouts"):
        train_opd.run(parse(train_opd, ["--synthetic", "--cut-at-first-fault"]))


@pytest.mark.parametrize("stage", ["opd", "rl"])
def test_unconstrained_rollouts_train_on_the_models_own_answers_and_log_its_validity(planted, trained_cft, tmp_path,
                                                                                    stage):
    """``--unconstrained-rollouts``: each validation also decodes without the constraint (the curve of learned
    validity), and the published manifest says how the rollouts were decoded."""
    import json

    from dgr2.model_store import ModelStore

    data, root, common = planted
    parent = str(ModelStore(root / "store").resolve("beauty-gr2", "cft"))
    module, extra = (train_opd, ["--teacher", "beauty-gr2:ar"]) if stage == "opd" else (train_rl, ["--group", "2"])
    store = tmp_path / "store"
    argv = [*common, "--from", parent, *extra, "--steps", "2", "--batch-size", "2", "--eval-every", "2",
            "--val-users", "10", "--unconstrained-rollouts", "--run-dir", str(tmp_path / stage), "--fresh"]
    argv[argv.index("--store") + 1] = str(store)
    if stage == "opd":  # its teacher lives in the planted store
        argv[argv.index("beauty-gr2:ar")] = str(ModelStore(root / "store").resolve("beauty-gr2", "ar"))
    assert module.run(parse(module, argv)) == 0
    log = [json.loads(line) for line in (tmp_path / stage / "log.jsonl").read_text().splitlines()]
    validated = [r for r in log if "val_ndcg@10" in r]
    assert [r["step"] for r in validated] == [2]
    assert 0.0 <= validated[0]["val_unconstrained"]["valid_raw"] <= 1.0
    if stage == "rl":  # the reward its recent steps earned, and how often a group had nothing to compare
        assert 0.0 <= validated[0]["train_flat_groups"] <= 1.0 and validated[0]["train_kl"] >= 0.0
        assert "train_reward" in validated[0]
    else:
        assert not any(k.startswith("train_") for k in validated[0])
    manifest = json.loads((ModelStore(store).resolve("beauty-gr2", stage) / "manifest.json").read_text())
    assert manifest["metrics"]["rollouts"] == "unconstrained"


def test_opd_anchor_adds_the_conversions_own_loss_on_the_data(planted, trained_cft, tmp_path):
    """``--anchor-weight``: the first step's loss grows by the conversion's cross-entropy on the same examples as
    the data writes them (same rollouts, same noise for the KL part), and the manifest records the weight."""
    import json

    from dgr2.model_store import ModelStore

    data, root, common = planted
    planted_store = ModelStore(root / "store")
    first = {}
    for weight in ("0", "2"):
        argv = [*common, "--from", str(planted_store.resolve("beauty-gr2", "cft")),
                "--teacher", str(planted_store.resolve("beauty-gr2", "ar")), "--steps", "1", "--batch-size", "4",
                "--eval-every", "1", "--val-users", "10", "--anchor-weight", weight,
                "--run-dir", str(tmp_path / weight), "--fresh"]
        argv[argv.index("--store") + 1] = str(tmp_path / f"store{weight}")
        assert train_opd.run(parse(train_opd, argv)) == 0
        first[weight] = json.loads((tmp_path / weight / "log.jsonl").read_text().splitlines()[0])["loss"]
        manifest = json.loads((ModelStore(tmp_path / f"store{weight}").resolve("beauty-gr2", "opd")
                               / "manifest.json").read_text())
        assert manifest["metrics"]["anchor_weight"] == float(weight)
        assert manifest["metrics"]["validity"] == {"weight": 0.0, "margin": 0.0, "against": "allowed"}
    assert first["2"] > first["0"] + 0.1, first  # 2 x a cross-entropy of a tiny model: well above 0.05
