"""Warm starts across the v3 -> v4 vocabulary (the <coN> tokens appended after every v3 token)."""

import pytest
import torch

from dgr2.model_store import Provenance, save_checkpoint
from dgr2.model_store.init import new_model
from dgr2.recipe.train_ar import warm_start


def test_grow_vocab_keeps_every_old_token_and_ties_the_head(catalog):
    model, v3 = new_model(catalog, "tiny", seed=1, co_strength=False)
    ids = torch.randint(0, len(v3), (2, 7))
    before = model(ids)
    model.grow_vocab(len(v3) + 6)
    after = model(ids)
    assert after.shape[-1] == len(v3) + 6 and model.config.vocab_size == len(v3) + 6
    assert torch.equal(after[..., : len(v3)], before)  # old tokens: same hidden states, same logits
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match="shrink"):
        model.grow_vocab(len(v3))


def test_a_v3_checkpoint_warm_starts_a_v4_model(tmp_path, catalog):
    old, v3 = new_model(catalog, "tiny", seed=2, co_strength=False)
    path = save_checkpoint(tmp_path / "m" / "v3", old, v3, catalog, Provenance(stage="ar"))
    _, v4 = new_model(catalog, "tiny", seed=0)
    model, vocab, parent = warm_start(str(path), None, v4)
    assert vocab is v4 and parent == "v3" and model.config.vocab_size == len(v4)
    emb = model.model.embed_tokens.weight
    assert torch.equal(emb[: len(v3)], old.model.embed_tokens.weight)
    assert emb[len(v3):].abs().sum() > 0  # the <coN> rows are initialised, not zero
    # the other way round (a v4 checkpoint onto a v3 vocabulary) is refused
    newer = save_checkpoint(tmp_path / "m" / "v4", model, v4, catalog, Provenance(stage="ar"))
    with pytest.raises(SystemExit, match="vocabulary differs"):
        warm_start(str(newer), None, v3)
