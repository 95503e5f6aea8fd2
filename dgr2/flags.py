"""argparse value types that refuse a nonsensical flag value by name (``dgr2`` prints it in one line).

``type=positive_int`` for counts (users, steps, batch sizes), ``at_least(2)`` where fewer makes no
ranking (``--candidates``), ``fraction`` for thresholds in [0, 1], ``non_negative`` for loss weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int in ``low..high`` (no upper bound when ``high`` is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


positive_int = at_least(1)


def number_in(low: float, high: float | None = None) -> Callable[[str], float]:
    """A number in ``[low, high]`` (no upper bound when ``high`` is None; nan refused)."""
    span = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {text!r}") from None
        if not (value >= low and (high is None or value <= high)):  # written so that nan fails
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {value}")
        return value

    parse.__name__ = "float"
    return parse


fraction = number_in(0.0, 1.0)  # thresholds
non_negative = number_in(0.0)  # loss weights


def add_pass_economy_arguments(p: argparse.ArgumentParser) -> None:
    """The block-diffusion decoder's pass-economy switches (``DecodeConfig.answer_claims``,
    ``claims_from_rank``, ``block_cache``), for every command that decodes (``dgr2 eval``, the benchmarks)."""
    p.add_argument("--answer-claims", action=argparse.BooleanOptionalAction, default=None,
                   help="diffusion: an answer position whose slot an earlier position takes in the same pass "
                        "picks among the slots left instead of waiting a pass (default: DecodeConfig's)")
    p.add_argument("--claims-from-rank", type=positive_int, default=None,
                   help="diffusion, with --answer-claims: the first rank that claims (default: DecodeConfig's)")
    p.add_argument("--block-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="diffusion: denoising passes compute only the positions they read or that changed, "
                        "reusing the others' cached keys and values (approximate; default: DecodeConfig's)")
