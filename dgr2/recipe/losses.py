"""Loss terms shared by the training stages."""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGAINST = ("allowed", "target")  # what the banned slots are weighed against in the validity term


def banned_nll(logits: torch.Tensor, mask: torch.Tensor, margin: float = 0.0,
               target: torch.Tensor | None = None) -> torch.Tensor:
    """``-log P(a token mask allows)`` per row, ``-log(1 - p_banned)``: the validity term of the CFT and OPD
    losses (the probability a model puts on slots the decoder's constraint would have to exclude).

    ``margin`` raises the banned logits by that much inside the term. The plain term's gradient is about
    ``p_banned``, so it fades long before an answer of 100 ranks is whole (that needs ``p_banned`` near
    1e-4); raised, it stays near its full size until ``p_banned`` falls below about ``exp(-margin)``.
    With ``target`` (column per row), the banned slots are weighed against the target alone instead of
    every allowed token: the model cannot pay the term by moving mass onto tokens that end or break
    the answer, only by raising the target above the slots it may not name."""
    if target is None:
        own = torch.logsumexp(logits.masked_fill(mask, float("-inf")), -1)
    else:
        own = logits.gather(-1, target[:, None]).squeeze(-1)
    banned = (logits + margin).masked_fill(~mask, float("-inf"))
    return torch.logsumexp(torch.cat([own[:, None], banned], -1), -1) - own


@dataclass(frozen=True)
class ValidityTerm:
    """The validity term a stage adds to its loss: ``weight`` x :func:`banned_nll` at ``margin``, the banned
    slots weighed against every allowed token or the target (``against``, one of ``AGAINST``)."""

    weight: float = 0.0
    margin: float = 0.0
    against: str = "allowed"

    def __post_init__(self):
        if self.against not in AGAINST:
            raise ValueError(f"against must be one of {AGAINST}, got {self.against!r}")

    def __call__(self, logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if self.against == "target" and target is None:
            raise ValueError("a validity term against the target needs the target")
        return self.weight * banned_nll(logits, mask, self.margin, target if self.against == "target" else None)
