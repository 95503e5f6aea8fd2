"""Move a trained model onto another catalog's vocabulary.

The prompt renders a candidate by its evidence (slot, popularity, brand and category matches,
links), which every catalog shares; only the history items' own tokens (``<item:ID>``,
``<brand:i>``, ``<cat:i>``) belong to one catalog, and their indices mean nothing in another. A
transfer keeps every weight and the embedding row of every token the two vocabularies share, and
gives each catalog token of the new vocabulary the mean of the source's rows of its family: the
model reads a new catalog's history item as the average item of the old one, and its evidence as
before. The result is a start for a short training on the new data, and a zero-shot model to measure.
"""

from __future__ import annotations

import torch

from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer
from dgr2.model_store.checkpoint import Checkpoint, CheckpointError

CATALOG_FAMILIES = ("<item:", "<brand:", "<cat:")  # tokens whose meaning is one catalog's


def family_of(token: str) -> str | None:
    return next((f for f in CATALOG_FAMILIES if token.startswith(f)), None)


def transferred_model(src: Checkpoint, vocab: Vocab) -> Transformer:
    """``src``'s network on ``vocab``: shared tokens keep their rows, catalog tokens get their family's mean."""
    if not src.config.tie_word_embeddings:
        raise CheckpointError(f"{src.path.name}: a transfer needs tied embeddings (every preset ties them)")
    old_ids = src.vocab.tokenizer.get_vocab(with_added_tokens=True)
    new_ids = vocab.tokenizer.get_vocab(with_added_tokens=True)
    old = src.model.model.embed_tokens.weight.detach().float()
    means = {}
    for fam in CATALOG_FAMILIES:
        rows = [i for t, i in old_ids.items() if t.startswith(fam)]
        means[fam] = old[rows].mean(0) if rows else old.mean(0)
    new = torch.empty(len(vocab), old.shape[1])
    unmatched = []
    for tok, i in sorted(new_ids.items(), key=lambda kv: kv[1]):  # id order: the tokenizer's map is unordered
        fam = family_of(tok)
        if fam is not None:
            new[i] = means[fam]
        elif tok in old_ids:
            new[i] = old[old_ids[tok]]
        else:
            unmatched.append(tok)
    if unmatched:  # a structural or evidence token the source never had: a different prompt format
        raise CheckpointError(f"{src.path.name} lacks {len(unmatched)} of the new vocabulary's non-catalog tokens "
                              f"({', '.join(unmatched[:5])}): trained on another prompt format")
    model = Transformer(src.config.replace(vocab_size=len(vocab))).eval()
    state = {k: v.float() for k, v in src.model.state_dict().items() if k != "lm_head.weight"}
    state["model.embed_tokens.weight"] = new
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is the tied embedding
        raise CheckpointError(f"{src.path.name}: weights do not fit its own config ({missing or unexpected})")
    return model
