"""Carry a fine-tuning from one model to a relative of it by weight arithmetic ("task vectors").

    new = base + scale * (tuned - tuned_parent)

The difference a fine-tuning made to a model (here: what conversion fine-tuning did to an AR
re-ranker to make it decode in blocks) is added to another model from the same pre-training line
(Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023). It is a starting point, not a
result: the recipe follows it with a short fine-tuning of its own, and the gain is measured against
starting from ``base`` (docs/results.md, "Conversion of the v4 AR model on the CPU").

Embedding rows are matched by token, so ``base`` may have tokens the other two lack (a vocabulary
grown by a warm start): those rows get no difference. The architectures must be the same, and so
must the two vocabularies of ``tuned`` and ``tuned_parent``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dgr2.model_store.checkpoint import Checkpoint, CheckpointError, Provenance, load_checkpoint
from dgr2.model_store.export import write_shipping_copy
from dgr2.model_store.registry import ModelStore

DECODE_FIELDS = ("decoder", "block_size", "threshold", "answer_threshold")  # taken from ``tuned``


def _vocab(c: Checkpoint) -> dict[str, int]:
    return c.vocab.tokenizer.get_vocab(with_added_tokens=True)


def grafted_weights(base: Checkpoint, tuned: Checkpoint, parent: Checkpoint,
                    scale: float = 1.0) -> dict[str, torch.Tensor]:
    """``base + scale * (tuned - parent)`` in float32, per parameter; rows of vocabulary-sized
    parameters matched by token."""
    arch = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "tie_word_embeddings")
    for field in arch:
        values = {c.path.name: getattr(c.config, field) for c in (base, tuned, parent)}
        if len(set(values.values())) > 1:
            raise CheckpointError(f"cannot graft between different architectures: {field} {values}")
    if _vocab(tuned) != _vocab(parent):
        raise CheckpointError(f"{tuned.path.name} and {parent.path.name} must share a vocabulary: the difference "
                              "between them is only defined token by token")
    vocab_b, vocab_t = _vocab(base), _vocab(tuned)
    shared = sorted((i, vocab_t[tok]) for tok, i in vocab_b.items() if tok in vocab_t)
    if not shared:
        raise CheckpointError(f"{base.path.name} shares no token with {tuned.path.name}")
    rows_b = torch.tensor([b for b, _ in shared])
    rows_t = torch.tensor([t for _, t in shared])
    sb, st, sp = base.model.state_dict(), tuned.model.state_dict(), parent.model.state_dict()
    out = {}
    for key, w in sb.items():
        delta = st[key].float() - sp[key].float()
        new = w.float().clone()
        if delta.shape == w.shape and w.shape[0] != base.config.vocab_size:
            new += scale * delta
        else:  # a vocabulary-sized parameter (embedding, output head): row by token
            new[rows_b] += scale * delta[rows_t]
        out[key] = new
    return out


def graft_checkpoints(base_src: str | Path, tuned_src: str | Path, parent_src: str | Path, store: ModelStore,
                      name: str, version: str, aliases: Sequence[str] = (), scale: float = 1.0,
                      dtype: torch.dtype = torch.bfloat16, evals: Sequence[dict] = ()) -> Path:
    """Write ``base + scale * (tuned - parent)`` as ``name/version`` of ``store``, with ``base``'s vocabulary
    and catalog and ``tuned``'s decoder settings."""
    base, tuned, parent = (load_checkpoint(s) for s in (base_src, tuned_src, parent_src))
    base.model.load_state_dict(grafted_weights(base, tuned, parent, scale))
    base.model.config = base.model.config.replace(**{f: getattr(tuned.config, f) for f in DECODE_FIELDS})
    recipe = f"{base.path.name} + {scale:g} x ({tuned.path.name} - {parent.path.name})"
    graft = {"base": base.path.name, "tuned": tuned.path.name, "tuned_parent": parent.path.name, "scale": scale}
    prov = Provenance(stage=tuned.manifest.get("stage", "unknown"), parent=recipe,
                      data_hash=base.manifest.get("data_hash"),
                      metrics={"graft": graft, **({"eval": list(evals)} if evals else {})})
    return write_shipping_copy(base, store, name, version, aliases, prov, dtype=dtype)
