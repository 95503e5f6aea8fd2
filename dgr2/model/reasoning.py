"""Reading a decoded reasoning trace back into its entries, so a person can read what the model said.

The trace (written for training by :mod:`recipe.traces`) assesses candidates one entry at a time:

  <cK> [<r:brand> <hI>] [<r:cat> <hI>] [<r:co> <hI> [<coN>]] <vN> <cK>

candidate ``K`` shares a brand / a leaf category with history item ``I`` (1 = the most recent),
co-occurs with it in other users' training sequences (prompt v4: in ``<coN>``'s bucket of shared
windows), and gets strength ``N`` (0..9). A decoded trace is what the model wrote, so the reader
never fails: an entry that strays from that shape is kept, marked incomplete, with what could be
read of it; tokens outside any entry are counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from dgr2.model.tokenizer import CO_FLOORS

RELATIONS = {"<r:brand>": "brand", "<r:cat>": "category", "<r:co>": "co_occurrence"}
_NUMBERED = re.compile(r"^<(c|h|v|co)(\d+)>$")


@dataclass
class Evidence:
    relation: str  # "brand" | "category" | "co_occurrence"
    history_recency: int  # 1 = the most recent history item
    co_bucket: int | None = None  # prompt v4: the <coN> bucket of a co-occurrence (see shared_windows)

    def shared_windows(self) -> tuple[int, int | None] | None:
        """The range of training windows a ``<coN>`` bucket stands for (upper ``None``: unbounded)."""
        if self.co_bucket is None or not 1 <= self.co_bucket <= len(CO_FLOORS):
            return None
        upper = CO_FLOORS[self.co_bucket] - 1 if self.co_bucket < len(CO_FLOORS) else None
        return CO_FLOORS[self.co_bucket - 1], upper


@dataclass
class TraceEntry:
    slot: int  # 0-based: <c1> is slot 0
    evidence: list[Evidence] = field(default_factory=list)
    strength: int | None = None
    complete: bool = True  # the entry followed the trace's shape and was closed by its own slot


@dataclass
class ReadTrace:
    entries: list[TraceEntry]
    stray_tokens: int  # tokens outside any entry


def read_trace(tokens: Sequence[str]) -> ReadTrace:
    """The entries of a decoded trace (its tokens, e.g. ``reasoning.split()``), in the order written."""
    entries: list[TraceEntry] = []
    stray = 0
    cur: TraceEntry | None = None
    pending: str | None = None  # a relation waiting for its <hI>
    last: str | None = None  # the previous token's kind inside the entry

    def close(complete: bool) -> None:
        nonlocal cur, pending
        assert cur is not None
        cur.complete = cur.complete and complete and pending is None and cur.strength is not None
        entries.append(cur)
        cur, pending = None, None

    for tok in tokens:
        m = _NUMBERED.match(tok)
        kind, number = (m.group(1), int(m.group(2))) if m else (tok, 0)
        if kind == "c":
            if cur is None:
                cur, last = TraceEntry(slot=number - 1), "open"
            elif cur.slot == number - 1:
                close(True)
            else:  # another slot before this entry closed: it ends here, unclosed
                close(False)
                cur, last = TraceEntry(slot=number - 1), "open"
            continue
        if cur is None:
            stray += 1
            continue
        if tok in RELATIONS and pending is None and cur.strength is None:
            pending, last = RELATIONS[tok], "relation"
        elif kind == "h" and pending is not None:
            cur.evidence.append(Evidence(pending, number))
            pending, last = None, "history"
        elif (kind == "co" and last == "history" and cur.evidence[-1].relation == "co_occurrence"
              and cur.evidence[-1].co_bucket is None):
            cur.evidence[-1].co_bucket, last = number, "co"
        elif kind == "v" and cur.strength is None:
            if pending is not None:  # a relation without its history item: the strength still counts
                cur.complete, pending = False, None
            cur.strength, last = number, "strength"
        else:
            cur.complete, last = False, "other"
    if cur is not None:
        close(False)
    return ReadTrace(entries, stray)
