"""The decoded trace as the API shows it to people: each entry names its candidate and history items by id.

:mod:`model.reasoning` reads the trace's tokens; this maps the slots and history positions it names
onto the request's own items (``<cK>`` is candidate ``K - 1``, ``<hI>`` the ``I``-th most recent
history item the prompt showed).
"""

from __future__ import annotations

from dgr2.model.reasoning import read_trace
from dgr2.model.tokenizer import MAX_HISTORY
from dgr2.service.schemas import Evidence, ReasoningStep, RerankRequest, item_id


def history_shown(req: RerankRequest, max_history: int) -> list[str]:
    """The history ids the prompt rendered, oldest first (as :func:`model.prompt.render_prompt` cuts it)."""
    return [item_id(h) for h in req.history][-min(max_history, MAX_HISTORY):] if max_history > 0 else []


def reasoning_steps(reasoning: str, req: RerankRequest, max_history: int) -> list[ReasoningStep]:
    history = history_shown(req, max_history)
    candidates = [item_id(c) for c in req.candidates]
    steps = []
    for entry in read_trace(reasoning.split()).entries:
        evidence = []
        for ev in entry.evidence:
            windows = ev.shared_windows()
            evidence.append(Evidence(
                relation=ev.relation, history_recency=ev.history_recency,
                history_item_id=history[-ev.history_recency] if 1 <= ev.history_recency <= len(history) else None,
                shared_windows_min=windows[0] if windows else None, shared_windows_max=windows[1] if windows else None))
        steps.append(ReasoningStep(index=entry.slot, item_id=candidates[entry.slot] if entry.slot < len(candidates)
                                   else None, evidence=evidence, strength=entry.strength, complete=entry.complete))
    return steps
