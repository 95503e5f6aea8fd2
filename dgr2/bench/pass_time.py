"""Where a decoder's pass time goes, and how many tokens each section of the completion decides per pass.

Shared by ``dgr2 bench decode`` (one clocked decode per run, beside the timed ones) and
``python -m dgr2.bench.profile_decode``. The split: ``network`` is ``Transformer.hidden_states``
(embedding, attention with the KV cache, MLPs), ``head`` the output-vocabulary projection
(``OutputHead``), ``decoder`` everything else (constraints, unmasking, cache bookkeeping, Python).
Wrapping the two calls costs a little time of its own, which is why the timed runs are separate.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from dgr2.model.decoding import SequenceResult
from dgr2.model.output_head import OutputHead
from dgr2.model.tokenizer import Vocab


class Clock:
    """Accumulates wall time and calls of wrapped callables."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
                self.calls[name] = self.calls.get(name, 0) + 1
        return timed


@contextmanager
def clocked(model, clock: Clock):
    """Times ``model.hidden_states`` and every ``OutputHead`` call while inside."""
    head_call = OutputHead.__call__
    model.hidden_states = clock.wrap("network", model.hidden_states)
    OutputHead.__call__ = clock.wrap("head", head_call)
    try:
        yield
    finally:
        del model.hidden_states  # the instance attribute; the class method shows through again
        OutputHead.__call__ = head_call


def split(clock: Clock, wall_s: float, passes: int) -> dict:
    """Milliseconds per pass (of the batch), in total and by part."""
    network, head = clock.seconds.get("network", 0.0), clock.seconds.get("head", 0.0)
    per = 1000.0 / max(passes, 1)
    return {"total": round(wall_s * per, 3), "network": round(network * per, 3), "head": round(head * per, 3),
            "decoder": round((wall_s - network - head) * per, 3)}


def section_rates(outs: list[SequenceResult], vocab: Vocab) -> dict:
    """Tokens per pass in the trace (before ``<answer>``) and in the answer (from ``<answer>`` on), from
    results decoded with ``record_passes``: a section's tokens over the passes that decided any of them."""
    tokens = {"trace": 0, "answer": 0}
    passes = {"trace": 0, "answer": 0}
    for o in outs:
        a = o.tokens.index(vocab.answer) if vocab.answer in o.tokens else len(o.tokens)
        for name, part in (("trace", o.decided_at[:a]), ("answer", o.decided_at[a:])):
            tokens[name] += len(part)
            passes[name] += len(set(part))
    return {f"tokens_per_forward_{name}": round(tokens[name] / passes[name], 3) if passes[name] else None
            for name in tokens}
