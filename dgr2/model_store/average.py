"""Uniform weight averaging of checkpoints from one training trajectory.

Averaging the weights of checkpoints taken along one run (or along warm-started continuations of
it) tends to land in a flatter, better-generalising point than any one of them: stochastic weight
averaging (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization",
UAI 2018) and "model soups" (Wortsman et al., ICML 2022). It only makes sense between models that
share an architecture, a vocabulary, a decoder kind and their training data, so anything else is
refused by name. The mean is taken in fp32 in the order the sources are given (the result is then
reproducible to the bit); the copy is written in shipping form like ``dgr2 model ship``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dgr2.model_store.checkpoint import Checkpoint, CheckpointError, Provenance, load_checkpoint
from dgr2.model_store.export import write_shipping_copy
from dgr2.model_store.registry import ModelStore


def _same(field: str, values: list, names: list[str]) -> None:
    """Refuse unless every value equals the first; short values are quoted, long ones (a vocabulary) not."""
    odd = [n for n, v in zip(names[1:], values[1:], strict=True) if v != values[0]]
    if odd:
        shown = [repr(v) for v in values]
        detail = (", ".join(f"{n}: {r}" for n, r in zip(names, shown, strict=True))
                  if max(map(len, shown)) <= 120 else f"{', '.join(odd)} differ from {names[0]}")
        raise CheckpointError(f"cannot average checkpoints whose {field} differ ({detail})")


def _check_compatible(ckpts: Sequence[Checkpoint]) -> None:
    names = [c.path.name for c in ckpts]
    _same("configs", [c.config for c in ckpts], names)
    _same("vocabularies", [c.vocab.tokenizer.get_vocab(with_added_tokens=True) for c in ckpts], names)
    _same("stages", [c.manifest.get("stage") for c in ckpts], names)
    _same("data hashes", [c.manifest.get("data_hash") for c in ckpts], names)


def average_weights(ckpts: Sequence[Checkpoint]) -> dict[str, torch.Tensor]:
    """The fp32 mean of each parameter, summed in the order of ``ckpts``."""
    states = [c.model.state_dict() for c in ckpts]
    return {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}


def average_checkpoints(srcs: Sequence[str | Path], store: ModelStore, name: str, version: str,
                        aliases: Sequence[str] = (), dtype: torch.dtype = torch.bfloat16,
                        evals: Sequence[dict] = ()) -> Path:
    """Average ``srcs`` (two or more checkpoint folders) into ``name/version`` of ``store``; the
    vocabulary and catalog come from the last source (all sources must share them)."""
    if len(srcs) < 2:
        raise CheckpointError("averaging needs at least two checkpoints")
    ckpts = [load_checkpoint(s) for s in srcs]
    _check_compatible(ckpts)
    last = ckpts[-1]
    last.model.load_state_dict(average_weights(ckpts))
    parents = [f"{Path(s).parent.name}/{Path(s).name}" for s in srcs]
    prov = Provenance(stage=last.manifest.get("stage", "unknown"), parent=" + ".join(parents),
                      data_hash=last.manifest.get("data_hash"),
                      metrics={"averaged_from": parents, **({"eval": list(evals)} if evals else {})})
    return write_shipping_copy(last, store, name, version, aliases, prov, dtype=dtype)
