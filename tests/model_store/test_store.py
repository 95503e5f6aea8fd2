"""Checkpoint store: round trip, hash verification that names the bad file, aliases, path safety."""

import json

import pytest
import torch

from dgr2.cli import main as cli
from dgr2.model_store import (
    CheckpointError,
    ModelStore,
    Provenance,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from dgr2.model_store.checkpoint import sha256_file
from dgr2.model_store.init import init_pair


@pytest.fixture()
def ckpt(tmp_path, tiny, catalog):
    model, vocab = tiny
    return save_checkpoint(tmp_path / "m" / "v1", model, vocab, catalog,
                           Provenance(stage="test", parent="none", metrics={"ndcg@10": 0.5}))


def test_round_trip(ckpt, tiny, catalog):
    model, _ = tiny
    loaded = load_checkpoint(ckpt)
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    assert torch.equal(loaded.model(ids), model(ids))
    m = loaded.manifest
    assert m["stage"] == "test" and m["metrics"] == {"ndcg@10": 0.5} and set(m["files"]) >= {"config.json"}
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "qwen3"
    assert len(loaded.catalog) == 60 and loaded.catalog.has_link_counts
    assert all(loaded.catalog.get(i).link_counts == catalog.get(i).link_counts for i in catalog.ids())
    assert any(catalog.get(i).link_counts for i in catalog.ids())
    assert loaded.vocab.co_strength


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "catalog.jsonl.xz", "config.json"])
def test_tampered_file_is_refused_by_name(ckpt, name):
    data = bytearray((ckpt / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (ckpt / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(ckpt)


def test_format_1_checkpoint_with_plain_catalog_still_loads(ckpt, catalog):
    """Checkpoints written before the catalog was compressed (format 1) hold catalog.jsonl."""
    catalog.save(ckpt / "catalog.jsonl")
    (ckpt / "catalog.jsonl.xz").unlink()
    m = json.loads((ckpt / "manifest.json").read_text())
    for key in ("files", "sizes"):
        m[key].pop("catalog.jsonl.xz")
    m["files"]["catalog.jsonl"] = sha256_file(ckpt / "catalog.jsonl")
    m["format"] = 1
    (ckpt / "manifest.json").write_text(json.dumps(m))
    loaded = load_checkpoint(ckpt)
    assert loaded.catalog.ids() == catalog.ids()
    assert all(loaded.catalog.get(i).links == catalog.get(i).links for i in catalog.ids())
    m["format"] = 2  # the same folder claiming format 2 lacks the compressed catalog
    (ckpt / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=r"does not list catalog\.jsonl\.xz"):
        load_checkpoint(ckpt)


def test_newer_format_is_refused(ckpt):
    m = json.loads((ckpt / "manifest.json").read_text())
    m["format"] = 99
    (ckpt / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="format 99"):
        verify_checkpoint(ckpt)


def test_truncated_file_is_refused(ckpt):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors .* truncated"):
        verify_checkpoint(ckpt)


def test_missing_files_are_refused(ckpt):
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        verify_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json"):
        verify_checkpoint(ckpt)


def test_store_aliases_and_path_safety(tmp_path, catalog):
    store = ModelStore(tmp_path)
    paths = init_pair(store, "demo", catalog)
    assert store.resolve("demo", "ar") == paths["ar"].resolve()
    assert store.resolve("demo", "diffusion") == paths["diffusion"].resolve()
    assert load_checkpoint(paths["diffusion"]).config.decoder == "diffusion"
    assert store.names() == ["demo"] and len(store.versions("demo")) == 2
    for bad in ["../demo", "..", "/etc", "demo/../../x", ".hidden", "a b", ""]:
        with pytest.raises(CheckpointError):
            store.resolve(bad, "ar")
        with pytest.raises(CheckpointError):
            store.resolve("demo", bad)
    with pytest.raises(CheckpointError, match="no version"):
        store.resolve("demo", "nope")
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(CheckpointError, match="escapes"):
        store.versions("link")


def test_cli_init_list_verify(tmp_path, capsys):
    assert cli(["model", "init", "--store", str(tmp_path), "--name", "x"]) == 0
    assert cli(["model", "verify", "x:diffusion", "--store", str(tmp_path)]) == 0
    assert '"decoder": "diffusion"' in capsys.readouterr().out
    (next((tmp_path / "x").glob("*-ar")) / "config.json").write_text("{}")
    assert cli(["model", "verify", "x:ar", "--store", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_ship_copies_in_bf16_without_titles(tmp_path, catalog, capsys):
    src, dst = ModelStore(tmp_path / "src"), tmp_path / "dst"
    init_pair(src, "m", catalog)
    assert cli(["model", "ship", "m:ar", "--from-store", str(tmp_path / "src"), "--store", str(dst),
                "--name", "m", "--version", "v1", "--alias", "ar", "--alias", "latest"]) == 0
    shipped = ModelStore(dst)
    assert shipped.aliases("m") == {"ar": "v1", "latest": "v1"}
    ckpt = load_checkpoint(shipped.resolve("m", "ar"))
    assert json.loads((ckpt.path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(it.title is None for it in ckpt.catalog.items.values())
    assert ckpt.manifest["parent"].endswith("init-tiny-s0-ar") and ckpt.manifest["stage"] == "init"
    original = load_checkpoint(src.resolve("m", "ar"))
    ids = torch.randint(0, original.config.vocab_size, (1, 7))
    assert (ckpt.model(ids) - original.model(ids)).abs().max() < 0.1  # bf16 rounding only


def test_ship_records_eval_results_in_the_manifest(tmp_path, catalog):
    src, dst = ModelStore(tmp_path / "src"), tmp_path / "dst"
    init_pair(src, "m", catalog)
    seeds = tmp_path / "evals.jsonl"
    seeds.write_text("".join(json.dumps({"split": "test", "neg_seed": s, "ndcg@10": 0.1 * s}) + "\n" for s in (1, 2)))
    single = tmp_path / "eval.json"
    single.write_text(json.dumps({"split": "test", "neg_seed": 3, "ndcg@10": 0.3}, indent=2))
    assert cli(["model", "ship", "m:ar", "--from-store", str(tmp_path / "src"), "--store", str(dst), "--name", "m",
                "--version", "v1", "--eval", str(seeds), "--eval", str(single)]) == 0
    manifest = load_checkpoint(ModelStore(dst).resolve("m", "v1")).manifest
    assert [e["neg_seed"] for e in manifest["metrics"]["eval"]] == [1, 2, 3]
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(SystemExit, match="bad.json"):
        cli(["model", "ship", "m:ar", "--from-store", str(tmp_path / "src"), "--store", str(dst), "--name", "m",
             "--version", "v2", "--eval", str(tmp_path / "bad.json")])


def test_ship_stores_decode_thresholds_that_decoding_then_uses(tmp_path, catalog):
    from dgr2.model.decoding import DecodeConfig

    src, dst = ModelStore(tmp_path / "src"), tmp_path / "dst"
    init_pair(src, "m", catalog)
    assert cli(["model", "ship", "m:diffusion", "--from-store", str(tmp_path / "src"), "--store", str(dst),
                "--name", "m", "--version", "v1", "--threshold", "0.8", "--answer-threshold", "0.0"]) == 0
    ckpt = load_checkpoint(ModelStore(dst).resolve("m", "v1"))
    assert json.loads((ckpt.path / "config.json").read_text())["answer_threshold"] == 0.0
    cfg = DecodeConfig.for_model(ckpt.config, max_new_tokens=64)
    assert (cfg.threshold, cfg.answer_threshold) == (0.8, 0.0)
    assert DecodeConfig.for_model(load_checkpoint(src.resolve("m", "diffusion")).config).answer_threshold is None
    # without the constraint there is no answer section for the stored answer threshold to apply to
    free = DecodeConfig.for_model(ckpt.config, max_new_tokens=64, constrain_answer=False)
    assert (free.threshold, free.answer_threshold, free.constrain_answer) == (0.8, None, False)


def test_average_is_the_fp32_mean_and_names_its_sources(tmp_path, catalog, capsys):
    src, dst = ModelStore(tmp_path / "src"), tmp_path / "dst"
    init_pair(src, "m", catalog, seed=0)
    init_pair(src, "m", catalog, seed=1)
    assert cli(["model", "average", "m:init-tiny-s0-ar", "m:init-tiny-s1-ar", "--from-store", str(tmp_path / "src"),
                "--store", str(dst), "--name", "m", "--version", "avg", "--alias", "ar", "--dtype", "float32"]) == 0
    assert '"averaged"' in capsys.readouterr().out
    a, b = (load_checkpoint(src.resolve("m", f"init-tiny-s{s}-ar")).model.state_dict() for s in (0, 1))
    avg = load_checkpoint(ModelStore(dst).resolve("m", "ar"))
    for k, v in avg.model.state_dict().items():
        assert torch.equal(v, (a[k] + b[k]) / 2), k
    assert any(not torch.equal(v, a[k]) for k, v in avg.model.state_dict().items())  # not a copy of either
    assert avg.manifest["metrics"]["averaged_from"] == ["m/init-tiny-s0-ar", "m/init-tiny-s1-ar"]
    assert avg.manifest["stage"] == "init" and avg.config.decoder == "ar"


def test_average_refuses_what_cannot_be_averaged(tmp_path, catalog, capsys):
    src, store = ModelStore(tmp_path / "src"), str(tmp_path / "src")
    init_pair(src, "m", catalog, seed=0)
    init_pair(src, "m", catalog, preset_name="small", seed=0)
    mixed = cli(["model", "average", "m:init-tiny-s0-ar", "m:init-tiny-s0-diffusion", "--from-store", store,
                 "--store", str(tmp_path / "dst"), "--version", "x"])
    assert mixed == 2 and "configs differ" in capsys.readouterr().err
    sizes = cli(["model", "average", "m:init-tiny-s0-ar", "m:init-small-s0-ar", "--from-store", store,
                 "--store", str(tmp_path / "dst"), "--version", "x"])
    assert sizes == 2 and "configs differ" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="at least two"):
        cli(["model", "average", "m:init-tiny-s0-ar", "--from-store", store, "--store", str(tmp_path / "dst"),
             "--version", "x"])
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").rglob("model.safetensors"))


def test_record_eval_adds_results_to_the_manifest_once_and_keeps_the_hashes(ckpt, tmp_path, capsys):
    """``dgr2 model record-eval``: the evaluations land under metrics.eval beside what was there, a second
    run adds nothing, the checkpoint still verifies; a result of another checkpoint is refused by name."""
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"checkpoint": "v1", "neg_seed": 1, "ndcg@10": 0.3}) + "\n"
                    + json.dumps({"checkpoint": "v1", "neg_seed": 2, "ndcg@10": 0.31}) + "\n")
    assert cli(["model", "record-eval", str(ckpt), "--eval", str(ours)]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 2
    assert cli(["model", "record-eval", str(ckpt), "--eval", str(ours)]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 0
    m = verify_checkpoint(ckpt)
    assert m["metrics"]["ndcg@10"] == 0.5 and [e["neg_seed"] for e in m["metrics"]["eval"]] == [1, 2]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"checkpoint": "v2", "neg_seed": 3}))
    assert cli(["model", "record-eval", str(ckpt), "--eval", str(other)]) != 0
    err = capsys.readouterr().err
    assert "'v2'" in err and "'v1'" in err and "Traceback" not in err
    assert len(verify_checkpoint(ckpt)["metrics"]["eval"]) == 2
