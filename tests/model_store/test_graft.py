"""dgr2 model graft: BASE + SCALE x (TUNED - TUNED_PARENT), rows of the vocabulary matched by token."""

import json

import pytest
import torch

from dgr2.cli import main as cli
from dgr2.model_store import CheckpointError, Provenance, load_checkpoint, save_checkpoint
from dgr2.model_store.init import new_model


@pytest.fixture()
def trio(tmp_path, catalog):
    """A v3-vocabulary parent and its 'fine-tuned' diffusion child, and a v4-vocabulary base (more tokens)."""
    parent, v3 = new_model(catalog, "tiny", seed=0, co_strength=False)
    tuned, _ = new_model(catalog, "tiny", seed=0, co_strength=False)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tuned.config = tuned.config.replace(decoder="diffusion", block_size=8, threshold=0.7, answer_threshold=0.0)
    base, v4 = new_model(catalog, "tiny", seed=1, co_strength=True)
    assert len(v4) > len(v3)
    paths = {}
    for name, model, vocab in (("parent", parent, v3), ("tuned", tuned, v3), ("base", base, v4)):
        paths[name] = save_checkpoint(tmp_path / "src" / name, model, vocab, catalog, Provenance(stage=name))
    return paths


def test_graft_adds_the_difference_row_by_token(trio, tmp_path):
    out = tmp_path / "out"
    assert cli(["model", "graft", str(trio["base"]), str(trio["tuned"]), str(trio["parent"]), "--store", str(out),
                "--version", "g", "--scale", "0.5", "--dtype", "float32"]) == 0
    got, base, tuned, parent = (load_checkpoint(p) for p in (out / "beauty-gr2" / "g", trio["base"], trio["tuned"],
                                                             trio["parent"]))
    sg, sb, st, sp = (c.model.state_dict() for c in (got, base, tuned, parent))
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(sg[w], sb[w] + 0.5 * (st[w] - sp[w]), atol=1e-6)
    emb = "model.embed_tokens.weight"
    vb, vt = (c.vocab.tokenizer.get_vocab(with_added_tokens=True) for c in (base, tuned))
    for tok in ("<c1>", "<answer>", "<co1>"):
        i = vb[tok]
        # a token only the base has gets no difference
        expected = sb[emb][i] + 0.5 * (st[emb][vt[tok]] - sp[emb][vt[tok]]) if tok in vt else sb[emb][i]
        assert torch.allclose(sg[emb][i], expected, atol=1e-6), tok
    assert "<co1>" not in vt
    assert got.vocab.same_tokens(base.vocab)
    cfg = got.config
    assert (cfg.decoder, cfg.block_size, cfg.threshold, cfg.answer_threshold) == ("diffusion", 8, 0.7, 0.0)
    assert json.loads((out / "beauty-gr2" / "g" / "manifest.json").read_text())["metrics"]["graft"]["scale"] == 0.5


def test_graft_refuses_what_has_no_meaning(trio, tmp_path, catalog):
    other, vocab = new_model(catalog, "tiny", seed=0, hidden_size=32, head_dim=8)
    odd = save_checkpoint(tmp_path / "odd", other, vocab, catalog, Provenance(stage="x"))
    from dgr2.model_store.graft import graft_checkpoints
    from dgr2.model_store.registry import ModelStore

    store = ModelStore(tmp_path / "out")
    with pytest.raises(CheckpointError, match="different architectures: hidden_size"):
        graft_checkpoints(odd, trio["tuned"], trio["parent"], store, "m", "v")
    with pytest.raises(CheckpointError, match="must share a vocabulary"):
        graft_checkpoints(trio["base"], trio["tuned"], trio["base"], store, "m", "v")
