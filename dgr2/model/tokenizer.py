"""The tokenizer: one word-level vocabulary over special, structural, slot, trace and feature tokens.

Built with the ``tokenizers`` library and saved as ``tokenizer.json`` (``PreTrainedTokenizerFast``
opens it). Every token is a whitespace-free word, so a rendered prompt is just the tokens joined by
spaces and round-trips through ``encode``/``decode``. Layout (ids in this order):

  specials      <pad> <eos> <mask> <unk>
  structure     <history> </history> <candidates> </candidates> <think> </think> <answer> </answer>
                <unk_item> <unk_brand> <unk_cat>
  slots         <c1> .. <c100>           candidate names (RankGPT-style): the answer vocabulary
  trace         <r:brand> <r:cat> <r:co> <r:none>, <h1> .. <h50> (history item by recency),
                <v0> .. <v9> (evidence strength)
  features      <pop0> .. <pop9>, <brand:i>, <cat:i> (index into the catalog's sorted names),
                <item:ID> for every catalog item
  co-strength   <co1> .. <co6>: how many training windows a candidate shares with the history item
                it is linked to, by bucket (``CO_FLOORS``; prompt v4, 2026-11-27). Last, so that
                a vocabulary without them (the v3 checkpoints) is a prefix of one with them and
                its weights warm-start the larger model (``extends``).
"""

from __future__ import annotations

import bisect
import re
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from dgr2.model.catalog import POP_BUCKETS, Catalog

MAX_SLOTS = 100
MAX_HISTORY = 50
EVIDENCE_LEVELS = 10
# A trace entry names its slot twice (opening the entry and after its strength, see recipe.traces);
# decoders and training exclusions ban a slot in the trace once it has been named this often.
TRACE_SLOT_USES = 2

SPECIAL = ["<pad>", "<eos>", "<mask>", "<unk>"]
STRUCTURE = ["<history>", "</history>", "<candidates>", "</candidates>", "<think>", "</think>",
             "<answer>", "</answer>", "<unk_item>", "<unk_brand>", "<unk_cat>"]
RELATIONS = ["<r:brand>", "<r:cat>", "<r:co>", "<r:none>"]
# Lowest shared-window count of each <coN> bucket: 1, 2, 3-4, 5-8, 9-16, 17+ (log scale; 93% of
# Beauty candidates have no link, 6% share one window with the linked history item).
CO_FLOORS = (1, 2, 3, 5, 9, 17)
_ITEM_ID = re.compile(r"^[^\s<>]+$")


def slot_token(k: int) -> str:
    """Token naming the k-th candidate, 0-based ``k`` -> ``<c{k+1}>``."""
    return f"<c{k + 1}>"


def history_token(recency: int) -> str:
    """``<h1>`` is the most recent history item."""
    return f"<h{recency + 1}>"


def co_bucket(count: int) -> int:
    """1-based bucket of a positive shared-window count (``<co{bucket}>``)."""
    return bisect.bisect_right(CO_FLOORS, count)


def co_token(count: int) -> str:
    return f"<co{co_bucket(count)}>"


CO_TOKENS = [f"<co{b + 1}>" for b in range(len(CO_FLOORS))]


def item_token(item_id: str) -> str:
    return f"<item:{item_id}>"


def vocabulary(catalog: Catalog, co_strength: bool = True) -> list[str]:
    """Every token in id order; ``co_strength=False`` leaves out the <coN> tokens (a v3 vocabulary)."""
    tokens = SPECIAL + STRUCTURE
    tokens += [slot_token(k) for k in range(MAX_SLOTS)]
    tokens += RELATIONS + [history_token(i) for i in range(MAX_HISTORY)]
    tokens += [f"<v{i}>" for i in range(EVIDENCE_LEVELS)]
    tokens += [f"<pop{i}>" for i in range(POP_BUCKETS)]
    tokens += [f"<brand:{i}>" for i in range(len(catalog.brands))]
    tokens += [f"<cat:{i}>" for i in range(len(catalog.categories))]
    for item_id in catalog.ids():
        if not _ITEM_ID.match(item_id):
            raise ValueError(f"catalog item id {item_id!r} cannot be a token (whitespace or angle brackets)")
        tokens.append(item_token(item_id))
    return tokens + (CO_TOKENS if co_strength else [])


def build_tokenizer(catalog: Catalog, co_strength: bool = True) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(vocabulary(catalog, co_strength))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIAL)  # already in the vocabulary: keeps their ids, marks them special
    return tok


class Vocab:
    """Token ids the decoders and the prompt code need, over a ``tokenizers.Tokenizer``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._to_id = tokenizer.get_vocab(with_added_tokens=True)
        self._to_tok = {i: t for t, i in self._to_id.items()}
        missing = [t for t in SPECIAL + STRUCTURE + [slot_token(k) for k in range(MAX_SLOTS)] if t not in self._to_id]
        if missing:
            raise ValueError(f"tokenizer lacks required tokens: {missing[:5]}")
        for name in ("pad", "eos", "mask", "unk"):
            setattr(self, name, self._to_id[f"<{name}>"])
        self.think, self.end_think = self._to_id["<think>"], self._to_id["</think>"]
        self.answer, self.end_answer = self._to_id["<answer>"], self._to_id["</answer>"]
        self.slot_ids: list[int] = [self._to_id[slot_token(k)] for k in range(MAX_SLOTS)]
        self._slot_of = {t: k for k, t in enumerate(self.slot_ids)}
        # prompt v4 (co-strength tokens) or v3: the checkpoint's vocabulary says which it was trained on
        self.co_strength = all(t in self._to_id for t in CO_TOKENS)

    @classmethod
    def from_file(cls, path: str | Path) -> Vocab:
        return cls(Tokenizer.from_file(str(path)))

    def __len__(self) -> int:
        return len(self._to_id)

    def same_tokens(self, other: Vocab) -> bool:
        """True when both map every token to the same id (weights trained on one fit the other)."""
        return self._to_id == other._to_id

    def extends(self, other: Vocab) -> bool:
        """True when ``other`` is this vocabulary's prefix: same ids for its tokens, new ones after."""
        return len(other) <= len(self) and all(self._to_id.get(t) == i for t, i in other._to_id.items())

    def id(self, token: str) -> int | None:
        return self._to_id.get(token)

    def ids(self, tokens: list[str]) -> list[int]:
        return [self._to_id.get(t, self.unk) for t in tokens]

    def token(self, idx: int) -> str:
        return self._to_tok.get(int(idx), "<unk>")

    def decode(self, ids) -> str:
        return " ".join(self.token(i) for i in ids)

    def slot_of(self, token_id: int) -> int | None:
        """0-based slot index of a slot token id, else ``None``."""
        return self._slot_of.get(int(token_id))

    @cached_property
    def output_ids(self) -> list[int]:
        """Every token a completion can contain (trace, answer, ``<eos>``): the decoders' output vocabulary.

        Item, brand, category and popularity tokens only ever appear in prompts, so neither training
        nor decoding spends a softmax over them (see :mod:`model.output_head`)."""
        tokens = ["</think>", "<answer>", "</answer>", "<eos>", *RELATIONS]
        tokens += [history_token(i) for i in range(MAX_HISTORY)] + [f"<v{i}>" for i in range(EVIDENCE_LEVELS)]
        tokens += CO_TOKENS if self.co_strength else []
        return sorted({self._to_id[t] for t in tokens} | set(self.slot_ids))

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))
