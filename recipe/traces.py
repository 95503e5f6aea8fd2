"""Reasoning traces and SFT targets, computed from training interactions only.

For every candidate the evidence is:
  brand  the most recent history item of the same brand        -> ``<r:brand> <hI>``
  cat    the most recent history item of the same leaf category -> ``<r:cat> <hI>``
  co     the most recent history item that co-occurs with it in other users' training sequences
         (within 5 positions, or as the next item)             -> ``<r:co> <hI>``
and a heuristic score combining them with popularity, rendered as a strength level ``<v0>..<v9>``.
``<hI>`` names the I-th most recent history item. The trace lists candidates by decreasing score:

  <c17> <r:brand> <h1> <r:co> <h2> <v8> <c3> <r:cat> <h4> <v5> ... <c9> <r:none> <v0>

cut at whole entries to at most ``trace_len`` tokens. The SFT answer puts the target first and the
other candidates in trace order (decreasing score, ties by slot), so the trace carries exactly the
evidence the ranking is built from. A user's own interactions are subtracted from the
co-occurrence counts when building that user's training examples, so a trace never hints at the
target through the example itself.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from model.catalog import Catalog
from model.tokenizer import EVIDENCE_LEVELS, MAX_HISTORY, history_token, slot_token

WINDOW = 5  # co-occurrence window within a training sequence
SCAN = 20  # history items (most recent first) scanned for evidence
W_BRAND, W_CAT, W_POP, W_CO, W_NEXT = 3.0, 1.0, 0.5, 2.0, 2.0  # tuned on 5,000 validation users
DEFAULT_TRACE_LEN = 128  # longer than a 100-candidate answer (103 tokens), as in the paper


def pair_counts(seq: Sequence[str]) -> tuple[Counter, Counter]:
    """Co-occurrence (within ``WINDOW``) and next-item pair counts of one sequence."""
    co, nxt = Counter(), Counter()
    for i, a in enumerate(seq):
        for j in range(max(0, i - WINDOW), min(len(seq), i + WINDOW + 1)):
            if j != i:
                co[(a, seq[j])] += 1
        if i + 1 < len(seq):
            nxt[(a, seq[i + 1])] += 1
    return co, nxt


class ItemStats:
    """Popularity and item-item co-occurrence over the training part of every sequence."""

    def __init__(self, train_sequences: dict[str, Sequence[str]]) -> None:
        self.pop: Counter = Counter()
        self.co: dict[str, Counter] = defaultdict(Counter)
        self.nxt: dict[str, Counter] = defaultdict(Counter)
        self._own: dict[str, tuple[Counter, Counter]] = {}
        for user, seq in train_sequences.items():
            self.pop.update(seq)
            co, nxt = pair_counts(seq)
            self._own[user] = (co, nxt)
            for (a, b), n in co.items():
                self.co[a][b] += n
            for (a, b), n in nxt.items():
                self.nxt[a][b] += n

    def pair(self, user: str | None, h: str, c: str) -> tuple[int, int]:
        """(co, next) counts of history item ``h`` with candidate ``c``, minus ``user``'s own."""
        co, nxt = self.co[h].get(c, 0), self.nxt[h].get(c, 0)
        if user is not None and user in self._own:
            own_co, own_nxt = self._own[user]
            co -= own_co.get((h, c), 0)
            nxt -= own_nxt.get((h, c), 0)
        return co, nxt


@dataclass
class Evidence:
    slot: int
    score: float
    brand: int | None = None  # recency index of the matching history item
    cat: int | None = None
    co: int | None = None


def evidence(catalog: Catalog, stats: ItemStats, user: str | None, history: Sequence[str],
             candidates: Sequence[str]) -> list[Evidence]:
    """Evidence for each candidate, in slot order."""
    recent = list(history)[::-1][:SCAN]
    hist_items = [catalog.get(h) for h in recent]
    out = []
    for k, c in enumerate(candidates):
        item = catalog.get(c)
        ev = Evidence(slot=k, score=W_POP * math.log1p(stats.pop.get(c, 0)))
        for r, (h, hi) in enumerate(zip(recent, hist_items, strict=True)):
            w = 1.0 / (1 + r)
            if item is not None and hi is not None:
                if item.brand and hi.brand == item.brand:
                    ev.score += W_BRAND * w
                    ev.brand = r if ev.brand is None else ev.brand
                if item.category and hi.category == item.category:
                    ev.score += W_CAT * w
                    ev.cat = r if ev.cat is None else ev.cat
            co, nxt = stats.pair(user, h, c)
            if co or nxt:
                ev.score += w * (W_CO * math.log1p(co) + W_NEXT * math.log1p(nxt))
                ev.co = r if ev.co is None else ev.co
        out.append(ev)
    return out


def heuristic_order(evs: list[Evidence]) -> list[int]:
    """Slots by decreasing score, ties by slot."""
    return [e.slot for e in sorted(evs, key=lambda e: (-e.score, e.slot))]


def _level(score: float, top: float) -> str:
    frac = 0.0 if top <= 0 else score / top
    return f"<v{min(EVIDENCE_LEVELS - 1, int(frac * EVIDENCE_LEVELS))}>"


def render_trace(evs: list[Evidence], trace_len: int = DEFAULT_TRACE_LEN) -> list[str]:
    order = heuristic_order(evs)
    top = max((e.score for e in evs), default=0.0)
    by_slot = {e.slot: e for e in evs}
    tokens: list[str] = []
    for k in order:
        e = by_slot[k]
        entry = [slot_token(k)]
        for rel, r in (("brand", e.brand), ("cat", e.cat), ("co", e.co)):
            if r is not None and r < MAX_HISTORY:
                entry += [f"<r:{rel}>", history_token(r)]
        if len(entry) == 1:
            entry.append("<r:none>")
        entry.append(_level(e.score, top))
        if len(tokens) + len(entry) > trace_len:
            break
        tokens += entry
    return tokens


def sft_target(evs: list[Evidence], target_slot: int, trace_len: int = DEFAULT_TRACE_LEN) -> tuple[list[str], list[int]]:
    """(trace tokens, ranking): the target first, the rest in trace order."""
    order = [k for k in heuristic_order(evs) if k != target_slot]
    return render_trace(evs, trace_len), [target_slot, *order]
