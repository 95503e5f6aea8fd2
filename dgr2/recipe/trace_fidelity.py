"""How faithfully a decoded trace follows the rule, and how faithfully the answer follows the trace.

The SFT target is a trace computed from the prompt (:mod:`recipe.traces`) and an answer that puts
its guess at the target first, then sorts the rest by the trace's strengths. Where a model ranks
worse than the rule it was taught, these counts say which step it gets wrong:

  entries  decoded trace entries equal to the rule's entry for that slot (relations, ``<coN>``,
           strength, closing slot), over the rule's entries;
  levels   decoded entries whose strength ``<vN>`` equals the rule's, over the rule's entries;
  sorted   answer ranks 2..10 whose slot has the highest strength *the model itself wrote* among
           the slots not ranked before it (a slot its trace skipped counts as strength -1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

SORTED_RANKS = range(1, 10)  # answer ranks 2..10 (0-based): rank 1 is the model's guess, not a sort


def parse_entries(tokens: Sequence[str]) -> dict[str, list[str]]:
    """Trace entries by slot token: from a slot token to the same slot token again (inclusive).
    A slot's first complete entry counts; tokens outside any entry are ignored."""
    out: dict[str, list[str]] = {}
    open_slot, entry = None, []
    for tok in tokens:
        if open_slot is None:
            if tok.startswith("<c") and tok[2:-1].isdigit():
                open_slot, entry = tok, [tok]
            continue
        entry.append(tok)
        if tok == open_slot:
            out.setdefault(open_slot, entry)
            open_slot = None
    return out


def level_of(entry: Sequence[str]) -> int:
    for tok in reversed(entry):
        if tok.startswith("<v") and tok[2:-1].isdigit():
            return int(tok[2:-1])
    return -1


@dataclass
class TraceFidelity:
    entries: int = 0
    levels: int = 0
    reference: int = 0
    sorted_ranks: int = 0
    ranks: int = 0

    def add(self, decoded_trace: Sequence[str], reference: Sequence[tuple[int, list[str]]],
            order: Sequence[int]) -> None:
        """One answer: its decoded trace tokens, the rule's ``(slot, entry)`` list and the ranking."""
        decoded = parse_entries(decoded_trace)
        for _, ref in reference:
            got = decoded.get(ref[0])
            self.reference += 1
            self.entries += got == ref
            self.levels += got is not None and level_of(got) == level_of(ref)
        written = {int(slot[2:-1]) - 1: level_of(e) for slot, e in decoded.items()}
        open_levels = [written.get(k, -1) for k in range(len(order))]
        for rank, slot in enumerate(order):
            if rank in SORTED_RANKS:
                self.ranks += 1
                self.sorted_ranks += open_levels[slot] == max(open_levels)
            open_levels[slot] = -2  # ranked: no longer open

    def merge(self, other: TraceFidelity) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> dict[str, float]:
        return {"entries_exact": round(self.entries / max(self.reference, 1), 4),
                "levels_exact": round(self.levels / max(self.reference, 1), 4),
                "answer_sorted": round(self.sorted_ranks / max(self.ranks, 1), 4)}
