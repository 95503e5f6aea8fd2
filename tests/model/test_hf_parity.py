"""Our checkpoints are real Hugging Face checkpoints: transformers' Qwen3 gives the same logits."""

import copy

import pytest
import torch

from dgr2.model_store import Provenance, save_checkpoint


@pytest.fixture(scope="module")
def transformers(need):
    return need.module("transformers")


def test_logits_match_qwen3_for_causal_lm(tmp_path, tiny, catalog, transformers):
    model, vocab = copy.deepcopy(tiny)
    for p in model.parameters():  # norms start at 1: perturb so every weight is exercised
        p.data.add_(torch.randn_like(p) * 0.02)
    path = save_checkpoint(tmp_path / "ckpt", model, vocab, catalog, Provenance(stage="test"))
    hf = transformers.Qwen3ForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    ids = torch.randint(0, len(vocab), (2, 37))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(input_ids=ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4


def test_tokenizer_opens_in_transformers(tmp_path, tiny, catalog, transformers):
    model, vocab = tiny
    path = save_checkpoint(tmp_path / "ckpt", model, vocab, catalog, Provenance(stage="test"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    text = "<history> <item:S0001> </history> <candidates> <c1> <item:S0002> </candidates> <think>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == vocab.ids(text.split())
    assert tok.convert_ids_to_tokens(ids) == text.split()
