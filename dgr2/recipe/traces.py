"""Reasoning traces and SFT targets.

The trace assesses every candidate, in slot order, from the evidence the prompt shows for it:
  brand  the most recent history item of the same brand         -> ``<r:brand> <hI>``
  cat    the most recent history item of the same leaf category  -> ``<r:cat> <hI>``
  co     the history item the prompt marks it as linked to       -> ``<r:co> <hI>`` (v4: ``<r:co> <hI> <coN>``,
         with the bucket of their shared windows; co-occurrence in other users' training
         sequences, see :mod:`recipe.data`)
and a strength ``<v0>..<v9>``: the evidence score (those matches, recency-weighted, plus
popularity) on a fixed scale (:class:`EvidenceRule`), so each entry depends on its own candidate only;
the entry closes by naming its slot again, right after the strength. ``<hI>`` names the I-th most
recent history item. Entries are cut whole at ``trace_len`` tokens:

  <c1> <v3> <c1> <c2> <r:cat> <h4> <v5> <c2> ... <c17> <r:brand> <h1> <r:co> <h2> <v9> <c17> ...

Why the slot twice: the opening slot is the key that looks up the candidate's evidence in the
prompt; the closing one sits next to its strength, so each answer step, which ranks the open
candidates by strength, finds "the strongest open slot" by attending to closing slots keyed by the
token just before them (one hop), instead of having to link each strength back to a slot token a
variable distance earlier (two hops; the previous design's AR model learned the strengths to 93-95%
and still could not sort the answer by them). A slot may appear at most twice in the trace
(``model.tokenizer.TRACE_SLOT_USES``).

Everything in it is computable from the prompt (each entry re-reads the window that follows its
slot token there), so a model can learn to write it. The SFT answer puts the target first and
every other candidate by decreasing strength (ties and candidates past the cut shuffled): the trace
carries exactly the evidence the ranking is sorted by (ties in a random order, see
:func:`sft_target`), and choosing what goes first is where the model has to add what the evidence
alone does not say.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dgr2.model.catalog import Catalog
from dgr2.model.config import DEFAULT_ANSWER_TIES, DEFAULT_TRACE_LEN, AnswerTies
from dgr2.model.prompt import MATCH_SCAN
from dgr2.model.tokenizer import (
    CO_FLOORS,
    EVIDENCE_LEVELS,
    MAX_HISTORY,
    Vocab,
    co_bucket,
    co_token,
    history_token,
    slot_token,
)


@dataclass(frozen=True)
class EvidenceRule:
    """The evidence score's weights and its strength levels, for one prompt version.

    score = pop * popularity bucket + sum over brand (category) matches among the ``SCAN`` most
    recent history items of brand (cat) / (1 + I) + co / (1 + I) for the most recent linked item
    I, times log(1 + its shared windows) when the prompt shows them (v4: the ``<coN>`` bucket's
    floor, so the score is a function of the tokens the model sees). ``edges`` cut it into levels.
    """
    brand: float
    cat: float
    co: float
    pop: float
    edges: tuple[float, ...]
    co_strength: bool

    def level(self, score: float) -> int:
        return min(EVIDENCE_LEVELS - 1, bisect.bisect_right(self.edges, score))

    def to_dict(self) -> dict:
        """As JSON holds it (edges a list), so a rule read back from a file compares equal."""
        return {**asdict(self), "edges": list(self.edges)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "evidence rule") -> EvidenceRule:
        """A rule written by :meth:`to_dict` (``dgr2 fit-rule --out``); ``ValueError`` naming ``where``
        and the field when it is not one."""
        try:
            rule = cls(**{k: float(d[k]) for k in ("brand", "cat", "co", "pop")},
                       edges=tuple(float(e) for e in d["edges"]), co_strength=bool(d["co_strength"]))
        except KeyError as e:
            raise ValueError(f"{where}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
        if not 0 < len(rule.edges) < EVIDENCE_LEVELS or list(rule.edges) != sorted(set(rule.edges)):
            raise ValueError(f"{where}: 'edges' must be 1 to {EVIDENCE_LEVELS - 1} increasing numbers, "
                             f"not {d['edges']}")
        return rule


# v3 (every checkpoint before prompt v4, the served pair included): weights chosen on validation users
# with 2-window links, edges from the validation score distribution (docs/design.md, "Prompt").
RULE_V3 = EvidenceRule(brand=3.0, cat=1.0, co=3.0, pop=0.35,
                       edges=(1.4, 1.75, 2.1, 2.27, 2.45, 2.75, 3.1, 4.05, 6.0), co_strength=False)
# v4: weights by grid search and edges by coordinate ascent on random validation users, 1-window
# links (dgr2 fit-rule); scored on held-out test users in docs/design.md, "Prompt v4".
RULE_V4 = EvidenceRule(brand=5.0, cat=1.0, co=4.0, pop=0.15,
                       edges=(0.45, 0.6, 0.79, 0.99, 1.47, 2.43, 3.57, 4.39, 7.02), co_strength=True)
SCAN = MATCH_SCAN  # history items (most recent first) summed over for brand/category matches


def rule_for(vocab: Vocab, fitted: dict | None = None) -> EvidenceRule:
    """The rule a model's traces follow: ``fitted`` (``ModelConfig.evidence_rule``, a rule fitted to its
    catalog) when given, else the rule of the prompt its vocabulary renders (``Vocab.co_strength``: v4)."""
    if fitted is None:
        return RULE_V4 if vocab.co_strength else RULE_V3
    rule = EvidenceRule.from_dict(fitted, "the checkpoint's evidence_rule")
    if rule.co_strength != vocab.co_strength:
        raise ValueError("the checkpoint's evidence_rule was fitted for another prompt version "
                         f"(co_strength {rule.co_strength}, the vocabulary's {vocab.co_strength})")
    return rule


@dataclass
class Evidence:
    slot: int
    score: float
    brand: int | None = None  # recency index of the most recent matching history item
    cat: int | None = None
    co: int | None = None
    co_token: str | None = None  # v4: the <coN> of the windows shared with the linked item ``co``
    level: int = 0  # the score's strength level under the rule that computed it


def evidence(catalog: Catalog, history: Sequence[str], candidates: Sequence[str],
             rule: EvidenceRule = RULE_V4) -> list[Evidence]:
    """Evidence for each candidate, in slot order (``catalog`` may be a per-user training view)."""
    link_count = catalog.link_count
    recent = list(history)[::-1][:MAX_HISTORY]
    hist = [catalog.get(h) for h in recent]
    out = []
    for k, c in enumerate(candidates):
        item = catalog.get(c)
        ev = Evidence(slot=k, score=rule.pop * (item.pop if item else 0))
        for r, (h, hi) in enumerate(zip(recent, hist, strict=True)):
            w = 1.0 / (1 + r)
            if item is not None and hi is not None and r < SCAN:
                if item.brand and hi.brand == item.brand:
                    ev.score += rule.brand * w
                    ev.brand = r if ev.brand is None else ev.brand
                if item.category and hi.category == item.category:
                    ev.score += rule.cat * w
                    ev.cat = r if ev.cat is None else ev.cat
            if ev.co is None:  # the prompt shows only the most recent link
                n = link_count(h, c)
                if n > 0:
                    ev.co, strength = r, 1.0
                    if rule.co_strength:
                        ev.co_token = co_token(n)
                        strength = math.log1p(CO_FLOORS[co_bucket(n) - 1])
                    ev.score += rule.co * w * strength
        ev.level = rule.level(ev.score)
        out.append(ev)
    return out


def heuristic_order(evs: list[Evidence]) -> list[int]:
    """Slots by decreasing score, ties by slot."""
    return [e.slot for e in sorted(evs, key=lambda e: (-e.score, e.slot))]


def trace_entries(evs: list[Evidence], trace_len: int = DEFAULT_TRACE_LEN) -> list[tuple[int, list[str]]]:
    """(slot, entry tokens) in slot order, as many whole entries as fit in ``trace_len`` tokens."""
    out, used = [], 0
    for e in sorted(evs, key=lambda e: e.slot):
        entry = [slot_token(e.slot)]
        for rel, r in (("brand", e.brand), ("cat", e.cat), ("co", e.co)):
            if r is not None:
                entry += [f"<r:{rel}>", history_token(r)]
        if e.co_token is not None:
            entry.append(e.co_token)
        entry += [f"<v{e.level}>", slot_token(e.slot)]
        if used + len(entry) > trace_len:
            break
        out.append((e.slot, entry))
        used += len(entry)
    return out


def render_trace(evs: list[Evidence], trace_len: int = DEFAULT_TRACE_LEN) -> list[str]:
    return [t for _, entry in trace_entries(evs, trace_len) for t in entry]


def trace_strengths(evs: list[Evidence], entries: list[tuple[int, list[str]]]) -> dict[int, int]:
    """Slot -> the strength level its trace entry writes, for the slots ``entries`` (:func:`trace_entries`)
    reached; the others are absent."""
    reached = {s for s, _ in entries}
    return {e.slot: e.level for e in evs if e.slot in reached}


def sft_target(evs: list[Evidence], target_slot: int, trace_len: int = DEFAULT_TRACE_LEN,
               tie_seed: int = 0, ties: AnswerTies = DEFAULT_ANSWER_TIES) -> tuple[list[str], list[int]]:
    """(trace tokens, ranking): the target first, the rest by decreasing trace strength; ties, and
    candidates the trace did not reach (strength -1), in an order shuffled by ``tie_seed``, or with
    ``ties="slot"`` in ascending slot.

    Why shuffled: most candidates share the lowest strengths, and with ties broken by slot the
    cheapest way to lower the answer loss is to emit the lowest open slot, ignoring strengths (an
    AR run did exactly that: docs/design.md, "Ties in the SFT answer are shuffled"). With random
    ties the strengths are the only thing an answer step can predict. Why by slot, for a model that
    already reads strengths: a shuffled tie can only be written by remembering which of its
    members were named, a set the model has to track over ~100 ranks, and parallel picks from it
    collide; in slot order the next member is the next one the trace lists at that strength."""
    entries = trace_entries(evs, trace_len)
    strength = trace_strengths(evs, entries)
    tie = list(range(len(evs))) if ties == "slot" else random.Random(tie_seed).sample(range(len(evs)), len(evs))
    order = sorted((e.slot for e in evs if e.slot != target_slot), key=lambda k: (-strength.get(k, -1), tie[k]))
    return [t for _, entry in entries for t in entry], [target_slot, *order]
