"""What an eval counts, batch by batch, and the resume file that lets a long eval survive a stop.

An all-users AR eval takes about an hour a seed on a 2-core CPU (docs/recipe.md, "Resuming a run").
With ``dgr2 eval --resume-file F`` each finished batch appends its counts to ``F`` (one JSON line,
flushed), after a first line holding the eval's settings; run the same command again and it skips
the users ``F`` already holds and reports the metrics over all of them. A file written under other
settings is refused, naming the first setting that differs, so two different evals can never be mixed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dgr2.errors import UserError
from dgr2.model.guard import INVALID_KINDS
from dgr2.recipe.metrics import ndcg_at, summarize
from dgr2.recipe.trace_fidelity import TraceFidelity


class ResumeError(UserError):
    """A resume file that does not belong to this eval, or is damaged beyond its last line."""


@dataclass
class Tally:
    users: list[str] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)  # 0-based rank of each user's target
    valid: int = 0  # answers valid as decoded (before the guard)
    invalid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INVALID_KINDS, 0))
    passes: int = 0
    generated: int = 0
    decode_s: float = 0.0
    fidelity: TraceFidelity = field(default_factory=TraceFidelity)
    # per user, aligned with ``ranks`` (empty in files written before they were counted):
    raw_ranks: list[int] = field(default_factory=list)  # target's first place in the answer as decoded, -1: absent
    trace_tokens: list[int] = field(default_factory=list)  # length of the decoded trace

    def merge(self, other: Tally) -> None:
        self.users += other.users
        self.ranks += other.ranks
        self.valid += other.valid
        for kind in INVALID_KINDS:
            self.invalid[kind] += other.invalid[kind]
        self.passes += other.passes
        self.generated += other.generated
        self.decode_s += other.decode_s
        self.fidelity.merge(other.fidelity)
        self.raw_ranks += other.raw_ranks
        self.trace_tokens += other.trace_tokens

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict) -> Tally:
        return cls(**{**rec, "fidelity": TraceFidelity(**rec["fidelity"])})

    def summary(self) -> dict:
        n = len(self.ranks)
        return {
            "n": n,
            **summarize(self.ranks),
            "valid_raw": round(self.valid / n, 6),
            "invalid_raw": {k: round(v / n, 6) for k, v in self.invalid.items()},
            "tokens_per_forward": round(self.generated / max(self.passes, 1), 4),
            "decode_tokens_per_s": round(self.generated / max(self.decode_s, 1e-9), 2),
            "generated_tokens_mean": round(self.generated / n, 2),
            "decode_seconds": round(self.decode_s, 3),
            "trace": self.fidelity.summary(),  # what the model gets right of the rule it was taught
            **self._per_user_summary(n),
        }

    def _per_user_summary(self, n: int) -> dict:
        """NDCG@10 of the answers as decoded (an absent target scores 0) and the trace lengths; left out
        when part of the users were counted before these were."""
        out: dict = {}
        if len(self.raw_ranks) == n:
            out["ndcg@10_before_repair"] = round(sum(ndcg_at(r, 10) for r in self.raw_ranks if r >= 0) / n, 6)
        if len(self.trace_tokens) == n:
            lengths = sorted(self.trace_tokens)
            out["trace_tokens"] = {"mean": round(sum(lengths) / n, 2), "min": lengths[0],
                                   **{f"p{q}": lengths[min(n - 1, n * q // 100)] for q in (5, 50, 95)},
                                   "max": lengths[-1]}
        return out


class ResumeFile:
    """``settings`` on the first line, then one :class:`Tally` record per finished batch."""

    def __init__(self, path: str | os.PathLike, settings: dict) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as it reads back (tuples become lists)

    def load(self) -> Tally:
        """The counts already in the file (empty when it does not exist yet)."""
        if not self.path.exists():
            return Tally()
        head, done, keep = _read(self.path)
        if head != self.settings:
            head = head or {}
            key = next((k for k in sorted({*self.settings, *head}) if head.get(k) != self.settings.get(k)), "settings")
            there = f"{head[key]!r} there" if key in head else "not recorded there"
            raise ResumeError(f"{self.path} was written by another eval: {key} {there}, "
                             f"{self.settings.get(key)!r} now")
        if keep is not None:  # a stop in mid-write leaves at most the last line cut: redo that batch
            self._truncate(keep)
        return done

    def append(self, batch: Tally) -> None:
        new = not self.path.exists()
        with open(self.path, "a") as f:
            if new:
                f.write(json.dumps({"settings": self.settings}) + "\n")
            f.write(json.dumps(batch.record()) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _truncate(self, keep: list[str]) -> None:
        self.path.write_text("".join(line + "\n" for line in keep))


def read_resume_file(path: str | os.PathLike) -> tuple[dict, Tally]:
    """The settings and counts a resume file holds, as written (a cut last line is left out, not
    repaired): what ``dgr2 compare`` reads."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"{path}: no such eval resume file")
    head, done, _ = _read(path)
    if head is None:
        raise ResumeError(f"{path} is not an eval resume file (no settings line)")
    return head, done


def _read(path: Path) -> tuple[dict | None, Tally, list[str] | None]:
    """Settings line, merged batch records, and the lines to keep when the last one was cut (else None)."""
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0])["settings"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ResumeError(f"{path} is not an eval resume file (no settings line)") from None
    done = Tally()
    for n, line in enumerate(lines[1:], 2):
        try:
            done.merge(Tally.from_record(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError):
            if n == len(lines):
                return head, done, lines[: n - 1]
            raise ResumeError(f"{path}: line {n} is not a batch record") from None
    return head, done, None
