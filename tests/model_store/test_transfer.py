"""dgr2 model transfer: a model moved onto another catalog keeps its network and every shared token's
row; the new catalog's item, brand and category tokens start at the mean of their family's rows."""

import dataclasses
import json

import pytest
import torch

from dgr2.cli import main as cli
from dgr2.model.tokenizer import Vocab, build_tokenizer
from dgr2.model_store import CheckpointError, Provenance, load_checkpoint, save_checkpoint
from dgr2.model_store.init import new_model
from dgr2.model_store.registry import ModelStore
from dgr2.model_store.transfer import CATALOG_FAMILIES, family_of, transferred_model
from dgr2.recipe.formats.export import write_layout
from dgr2.recipe.synthetic import synthetic_data


@pytest.fixture()
def source(tmp_path, catalog):
    model, vocab = new_model(catalog, "tiny", seed=3)
    model.config = model.config.replace(decoder="diffusion", block_size=8, threshold=0.7)
    return save_checkpoint(tmp_path / "src", model, vocab, catalog, Provenance(stage="cft", data_hash="a" * 8))


def test_transfer_keeps_shared_rows_and_averages_the_catalog_tokens(source, tmp_path):
    other = synthetic_data(n_items=37, n_users=60, n_brands=4, n_categories=3, seed=7)
    src = load_checkpoint(source)
    vocab = Vocab(build_tokenizer(other.catalog))
    assert len(vocab) != len(src.vocab)
    moved = transferred_model(src, vocab)
    old_ids = src.vocab.tokenizer.get_vocab(with_added_tokens=True)
    old_emb = src.model.model.embed_tokens.weight.float()
    new_emb = moved.model.embed_tokens.weight
    for tok, i in vocab.tokenizer.get_vocab(with_added_tokens=True).items():
        fam = family_of(tok)
        if fam is None:
            assert torch.equal(new_emb[i], old_emb[old_ids[tok]]), tok
        else:  # even an item id both catalogs happen to use: in another catalog it names another item
            rows = [j for t, j in old_ids.items() if t.startswith(fam)]
            assert torch.allclose(new_emb[i], old_emb[rows].mean(0), atol=1e-6), tok
    assert {family_of(t) for t in vocab.tokenizer.get_vocab()} >= set(CATALOG_FAMILIES)
    so, sm = src.model.state_dict(), moved.state_dict()
    for key in so:
        if "embed_tokens" not in key and key != "lm_head.weight":
            assert torch.equal(so[key].float(), sm[key]), key
    assert moved.lm_head.weight is moved.model.embed_tokens.weight
    assert (moved.config.decoder, moved.config.block_size, moved.config.vocab_size) == ("diffusion", 8, len(vocab))


def test_transfer_refuses_a_source_of_another_prompt_format(tmp_path, catalog):
    v3_model, v3 = new_model(catalog, "tiny", seed=0, co_strength=False)
    src = load_checkpoint(save_checkpoint(tmp_path / "v3", v3_model, v3, catalog, Provenance(stage="ar")))
    with pytest.raises(CheckpointError, match="lacks 6 of the new vocabulary's non-catalog tokens.*<co1>"):
        transferred_model(src, Vocab(build_tokenizer(catalog, co_strength=True)))


def test_the_command_writes_the_new_catalog_and_its_data_hash(source, tmp_path):
    other = synthetic_data(n_items=37, n_users=60, n_brands=4, n_categories=3, seed=7)
    renamed = {i: f"T{n:03d}" for n, i in enumerate(other.catalog.ids())}  # a catalog with its own item ids
    items = [dataclasses.replace(it, id=renamed[it.id]) for it in other.catalog.items.values()]
    write_layout(tmp_path / "other", {u: [renamed[i] for i in s] for u, s in other.sequences.items()}, items)
    out = tmp_path / "out"
    assert cli(["model", "transfer", str(source), "--data-dir", str(tmp_path / "other"), "--store", str(out),
                "--name", "other-gr2", "--version", "t", "--alias", "ar", "--dtype", "float32"]) == 0
    got = load_checkpoint(out / "other-gr2" / "t")
    manifest = json.loads((out / "other-gr2" / "t" / "manifest.json").read_text())
    assert manifest["metrics"]["transfer"] == {"source": "src", "source_data_hash": "a" * 8}
    assert manifest["data_hash"] and manifest["data_hash"] != "a" * 8
    assert sorted(got.catalog.ids()) == sorted(renamed.values())
    assert got.vocab.id("<item:T000>") is not None and got.vocab.id("<item:S0000>") is None
    assert ModelStore(out).aliases("other-gr2") == {"ar": "t"}
