"""Prompt and answer format.

A training sequence is ``prompt · trace </think> <answer> ranking </answer> <eos>`` where

  prompt    = <history> item* </history> <candidates> (<cK> <popN> match link)* </candidates> <think>
  item      = <item:ID> <brand:i> <cat:i> <popN>         (the MATCH_SCAN most recent history items)
  match     = brand-match cat-match: <hI>, the most recent of the last MATCH_SCAN history items with
              the candidate's brand (category), or <r:none>
  link      = <hI> [<coN>], the most recent history item the candidate co-occurs with in other users'
              training sequences (catalog links) and, in prompt v4, how many windows they share
              (``<coN>``, a log-scale bucket), or <r:none>

Prompt v4 (2026-11-27) differs from v3 only by that ``<coN>``: a vocabulary that has the
``<coN>`` tokens (``Vocab.co_strength``) gets v4 prompts, one without (the checkpoints trained
before) gets v3, so each checkpoint keeps seeing the prompts it was trained on.

A candidate is rendered by its evidence, not its raw ids: a model trained for an hour on a CPU
cannot learn 12k item, brand or category embeddings from ~20k sequences, but it can learn to
weigh popularity, matches and links. Each candidate's evidence sits in a short window right after
its slot token (five tokens, six with a ``<coN>``), so the trace entry that starts with ``<cK>``
reads it back with one lookup of the tokens that followed ``<cK>`` in the prompt (an
induction-style copy; docs/design.md, "Prompt").

``parse_answer`` reads a decoded continuation back into slots and classifies what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dgr2.model.catalog import Catalog
from dgr2.model.tokenizer import MAX_HISTORY, MAX_SLOTS, Vocab, co_token, history_token, item_token, slot_token

ItemRef = str | Mapping[str, object]


def item_id_of(ref: ItemRef) -> str:
    return ref if isinstance(ref, str) else str(ref.get("id", ""))


def item_tokens(ref: ItemRef, catalog: Catalog) -> tuple[list[str], bool]:
    """Feature tokens of one item and whether it is unknown to the catalog."""
    item = catalog.get(item_id_of(ref))
    if item is not None:
        brand = catalog.brand_index.get(item.brand) if item.brand else None
        cat = catalog.category_index.get(item.category) if item.category else None
        return [item_token(item.id), _feature("brand", brand), _feature("cat", cat), f"<pop{item.pop}>"], False
    given = ref if isinstance(ref, Mapping) else {}
    brand = catalog.brand_index.get(str(given.get("brand"))) if given.get("brand") else None
    cat = catalog.category_index.get(str(given.get("category"))) if given.get("category") else None
    return ["<unk_item>", _feature("brand", brand), _feature("cat", cat), "<pop0>"], True


def _feature(kind: str, index: int | None) -> str:
    return f"<unk_{kind}>" if index is None else f"<{kind}:{index}>"


@dataclass
class RenderedPrompt:
    ids: list[int]
    num_slots: int
    unknown_items: list[str] = field(default_factory=list)  # ids (history or candidates) not in the catalog
    history_used: int = 0


LinkCount = Callable[[str, str], int]


def link_tokens(history_ids: Sequence[str], candidate: str, link_count: LinkCount, co_strength: bool) -> list[str]:
    """``<hI>`` for the most recent history item linked to ``candidate`` (followed by the ``<coN>``
    of their shared windows when ``co_strength``), else ``<r:none>``."""
    for r, h in enumerate(reversed(history_ids)):
        n = link_count(h, candidate)
        if n > 0:
            return [history_token(r), co_token(n)] if co_strength else [history_token(r)]
    return ["<r:none>"]


MATCH_SCAN = 20  # history items (most recent first) searched for a brand or category match


def match_token(history_feats: Sequence[str], feat: str) -> str:
    """``<hI>`` for the most recent of ``history_feats`` (most recent first) equal to ``feat``."""
    if not feat.startswith("<unk_"):
        for r, h in enumerate(history_feats[:MATCH_SCAN]):
            if h == feat:
                return history_token(r)
    return "<r:none>"


def check_catalog(vocab: Vocab, catalog: Catalog) -> None:
    """A v4 vocabulary needs a catalog that kept its link counts (format-2 catalogs written since)."""
    if vocab.co_strength and not catalog.has_link_counts:
        raise ValueError("this vocabulary renders link strengths (prompt v4) but the catalog has no link counts")


def render_prompt(vocab: Vocab, catalog: Catalog, history: Sequence[ItemRef], candidates: Sequence[ItemRef],
                  max_history: int = MAX_HISTORY) -> RenderedPrompt:
    """Token ids of the prompt; ``history`` is oldest first and is cut to its ``max_history`` most recent.

    ``catalog`` may be any object with the catalog's lookups (training passes a per-user view that
    leaves the user's own interactions out of popularity and links).
    """
    if not 1 <= len(candidates) <= MAX_SLOTS:
        raise ValueError(f"need 1..{MAX_SLOTS} candidates, got {len(candidates)}")
    check_catalog(vocab, catalog)
    history = list(history)[-min(max_history, MAX_HISTORY):] if max_history > 0 else []
    tokens, unknown, rendered = ["<history>"], [], []
    for i, ref in enumerate(history):
        toks, unk = item_tokens(ref, catalog)
        if i >= len(history) - MATCH_SCAN:
            tokens += toks
        rendered.append(toks)
        if unk:
            unknown.append(item_id_of(ref))
    recent_brands = [t[1] for t in reversed(rendered)]
    recent_cats = [t[2] for t in reversed(rendered)]
    tokens += ["</history>", "<candidates>"]
    history_ids = [item_id_of(ref) for ref in history]
    for k, ref in enumerate(candidates):
        toks, unk = item_tokens(ref, catalog)
        tokens += [slot_token(k), toks[3], match_token(recent_brands, toks[1]), match_token(recent_cats, toks[2]),
                   *link_tokens(history_ids, item_id_of(ref), catalog.link_count, vocab.co_strength)]
        if unk:
            unknown.append(item_id_of(ref))
    tokens += ["</candidates>", "<think>"]
    return RenderedPrompt(vocab.ids(tokens), len(candidates), list(dict.fromkeys(unknown)), len(history))


def render_completion(trace: Sequence[str], ranking: Sequence[int]) -> list[str]:
    """Target tokens after the prompt: trace, then the ranking (0-based slots, best first)."""
    return [*trace, "</think>", "<answer>", *(slot_token(k) for k in ranking), "</answer>", "<eos>"]


@dataclass
class AnswerParse:
    """A decoded continuation read back as a ranking.

    ``slots`` are the in-request slots in decoded order (duplicates kept); ``start`` is the index
    of ``<answer>`` in the continuation (``None`` when absent), so rank position ``r`` was decoded
    at continuation index ``start + 1 + r``. ``first_fault`` is the continuation index of the first
    answer token naming a used or foreign slot (``None`` when there is none).
    """

    num_slots: int
    slots: list[int]
    start: int | None
    duplicates: int = 0
    missing: int = 0
    out_of_set: int = 0
    malformed: bool = False
    first_fault: int | None = None

    @property
    def valid(self) -> bool:
        return not self.malformed and self.duplicates == 0 and self.out_of_set == 0 and self.missing == 0

    @property
    def wrong_fraction(self) -> float:
        """The share of the ``num_slots`` ranks a repair has to change: ranks naming a used or foreign slot,
        or slots never named, whichever is more (a short answer misses slots without repeating any); 1 when
        malformed. 0 exactly when valid, so a reward can grade how far an answer is from a permutation."""
        if self.malformed:
            return 1.0
        return min(1.0, max(self.duplicates + self.out_of_set, self.missing) / max(1, self.num_slots))


def parse_answer(vocab: Vocab, continuation: Sequence[int], num_slots: int) -> AnswerParse:
    """Classify the answer of a decoded continuation.

    malformed: no ``<answer>``, no ``</answer>`` after it, or a non-slot token inside it;
    out_of_set: slot tokens naming a candidate the request does not have (``<cK>`` with K > num_slots);
    duplicates: repeated occurrences of an in-request slot; missing: in-request slots never named.
    """
    ids = [int(t) for t in continuation]
    try:
        start = ids.index(vocab.answer)
    except ValueError:
        return AnswerParse(num_slots, [], None, missing=num_slots, malformed=True)
    slots, seen = [], set()
    out_of_set = duplicates = 0
    first_fault = None
    malformed = True  # until </answer> is found
    for i, t in enumerate(ids[start + 1:], start + 1):
        if t == vocab.end_answer:
            malformed = False
            break
        k = vocab.slot_of(t)
        if k is None:
            malformed = True
            break
        if (k >= num_slots or k in seen) and first_fault is None:
            first_fault = i
        if k >= num_slots:
            out_of_set += 1
        elif k in seen:
            duplicates += 1
            slots.append(k)
        else:
            seen.add(k)
            slots.append(k)
    else:
        malformed = True
    return AnswerParse(num_slots, slots, start, duplicates, num_slots - len(seen), out_of_set, malformed, first_fault)
