"""A/B routing between decoders, and how the shadow decoder's ranking is compared.

A user with an id always lands on the same decoder: ``sha256(salt + ":" + user_id)`` read as a
number in [0, 1) picks a bucket of the split, so assignment survives restarts and replicas and is
reshuffled only by changing the salt. Anonymous requests draw at random by the same weights. An
explicit request (body ``decoder`` first, then the ``x-decoder`` header) always wins.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


class ABRouter:
    def __init__(self, split: dict[str, float], salt: str, shadow_rate: float = 0.0,
                 rng: random.Random | None = None) -> None:
        total = sum(split.values())
        names = sorted(split)  # fixed order: the same hash maps to the same decoder whatever the env order
        self.split = {d: split[d] / total for d in names if split[d] > 0}
        self.salt, self.shadow_rate = salt, shadow_rate
        self._rng = rng or random.Random()

    def choose(self, user_id: str | None = None, override: str | None = None) -> str:
        if override:
            return override
        if user_id is None:
            u = self._rng.random()
        else:
            digest = hashlib.sha256(f"{self.salt}:{user_id}".encode()).digest()
            u = int.from_bytes(digest[:8], "big") / 2.0**64
        acc = 0.0
        for decoder, share in self.split.items():
            acc += share
            if u < acc:
                return decoder
        return next(reversed(self.split))  # u rounds past the last boundary

    def shadow_of(self, decoder: str) -> str | None:
        """The other decoder, for a sampled fraction ``shadow_rate`` of requests; else None."""
        if self.shadow_rate <= 0 or self._rng.random() >= self.shadow_rate:
            return None
        return "ar" if decoder == "diffusion" else "diffusion"


def kendall_tau(a: list[int], b: list[int]) -> float:
    """Kendall tau between two orders of the same items (no ties): 1 same, -1 reversed."""
    k = len(a)
    if k < 2:
        return 1.0
    pos_b = np.empty(k, dtype=np.int64)
    pos_b[np.asarray(b)] = np.arange(k)
    x = pos_b[np.asarray(a)]  # rank in b of the items in a's order
    sign = np.sign(x[None, :] - x[:, None])[np.triu_indices(k, 1)]
    return float(sign.sum() / (k * (k - 1) / 2))


def top_overlap(a: list[int], b: list[int], n: int = 10) -> float:
    """Share of the top ``n`` (or all, if fewer) the two orders agree on, ignoring order within it."""
    m = min(n, len(a))
    return len(set(a[:m]) & set(b[:m])) / m if m else 1.0
