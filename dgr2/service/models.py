"""The checkpoints being served: load + verify + warm a set, and swap sets atomically.

A :class:`ModelSet` is immutable; reloading builds a complete new one off to the side (loaded,
hash-verified, warmed by a real decode) and only then replaces the reference. A batch already
decoding keeps the engine it started with, so a swap never mixes checkpoints inside a batch and a
failed reload leaves the old set serving untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from dgr2.model.catalog import Item
from dgr2.model.decoding import DecodeConfig
from dgr2.model.engine import RankRequest, RankResult, Reranker
from dgr2.model_store import ModelStore, load_checkpoint

log = logging.getLogger(__name__)

# Warm-up ranks items the catalog cannot know, so it works whatever catalog a checkpoint carries.
WARMUP = RankRequest(history=[{"id": "__warmup_h__"}], candidates=[{"id": "__warmup_a__"}, {"id": "__warmup_b__"}])


@dataclass(frozen=True)
class Engine:
    """One decoder's loaded checkpoint and the reranker that runs it."""

    decoder: str
    ref: str  # what was asked for (an alias or a version)
    version: str  # what it resolved to: the version folder's name
    stage: str | None
    path: Path  # internal only: never sent to clients
    reranker: Reranker  # the service goes through rank() and info(), never into the reranker

    def rank(self, requests: list[RankRequest]) -> list[RankResult]:
        return self.reranker.rank(requests)

    @cached_property
    def catalog_ids(self) -> list[str]:
        """The catalog's item ids, sorted (example requests draw from them)."""
        return sorted(self.reranker.catalog.items)

    def describe(self, item_id: str) -> Item | None:
        """The catalog's entry for an item (its title, brand and category), if it has one."""
        return self.reranker.catalog.get(item_id)

    def info(self) -> dict:
        """What ``/v1/models`` shows of this decoder: its checkpoint and decoding settings."""
        d = self.reranker.decode
        return {"decoder": self.decoder, "ref": self.ref, "version": self.version, "stage": self.stage,
                "parameters": sum(p.numel() for p in self.reranker.model.parameters()),
                "catalog_items": len(self.reranker.catalog.items),
                "block_size": d.block_size, "threshold": d.threshold, "answer_threshold": d.answer_threshold,
                "max_new_tokens": d.max_new_tokens}


@dataclass(frozen=True)
class ModelSet:
    name: str
    engines: dict[str, Engine]
    loaded_at: float

    def versions(self) -> dict[str, str]:
        return {d: e.version for d, e in self.engines.items()}


def load_engine(store: ModelStore, name: str, decoder: str, ref: str, *, device: str, max_new_tokens: int,
                max_history: int) -> Engine:
    """Resolve, verify (sha256 of every file) and load one checkpoint; raises ``CheckpointError``."""
    path = store.resolve(name, ref)
    ckpt = load_checkpoint(path, device=device)
    if ckpt.config.decoder != decoder:
        # allowed on purpose: "naive conversion" serves AR weights with the diffusion decoder
        log.warning("%s decoder serves checkpoint %s trained as %s", decoder, path.name, ckpt.config.decoder)
    decode = DecodeConfig.for_model(ckpt.config, max_new_tokens=max_new_tokens)
    reranker = Reranker(ckpt.model, ckpt.vocab, ckpt.catalog, decoder=decoder, decode=decode,
                        max_history=max_history)
    return Engine(decoder, ref, path.name, ckpt.manifest.get("stage"), path, reranker)


def load_model_set(store: ModelStore, name: str, refs: dict[str, str], *, device: str, max_new_tokens: int,
                   max_history: int) -> ModelSet:
    engines = {d: load_engine(store, name, d, ref, device=device, max_new_tokens=max_new_tokens,
                              max_history=max_history) for d, ref in refs.items()}
    return ModelSet(name, engines, time.time())


def warm_up(models: ModelSet) -> None:
    """One small decode per engine: the first call pays allocator and kernel set-up, not a user."""
    for engine in models.engines.values():
        start = time.perf_counter()
        (result,) = engine.rank([WARMUP])
        if sorted(result.order) != [0, 1]:
            raise RuntimeError(f"{engine.decoder} warm-up returned an invalid ranking")
        log.info("warmed %s (%s) in %.0f ms", engine.decoder, engine.version, 1000 * (time.perf_counter() - start))


class ModelHolder:
    """The current :class:`ModelSet`; reading and replacing it is a single reference assignment."""

    def __init__(self) -> None:
        self._current: ModelSet | None = None

    @property
    def current(self) -> ModelSet | None:
        return self._current

    def swap(self, new: ModelSet) -> ModelSet | None:
        old, self._current = self._current, new
        return old

    def engine(self, decoder: str) -> Engine:
        if self._current is None:
            raise RuntimeError("no models loaded")
        return self._current.engines[decoder]
