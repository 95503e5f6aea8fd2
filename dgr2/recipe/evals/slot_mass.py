"""``dgr2 probe-validity``: the probability a checkpoint puts on slots the slot rule bans, read teacher-forced.

    dgr2 probe-validity --checkpoint beauty-gr2:diffusion --sample 64

On the SFT sequences (trace and answer) of uniformly sampled validation users, at every answer position:
the probability mass on the slots the rule bans there (named earlier in the answer, or not in the request)
and whether the most probable token is one of them, per rank band and per view: ``ar`` (everything before the
position clean, as the AR decoder sees it) and ``diffusion`` (the block's two complementary noisy copies, as
the block decoder sees it). An answer is valid only when all of its ~100 ranks are, so raw validity stays
at 0 until the error per rank is tiny; this measures that error, the curve along which validity is learned.
"""

from __future__ import annotations

import argparse
import json

import torch

from dgr2.flags import positive_int
from dgr2.recipe.block_diffusion import collate_diffusion
from dgr2.recipe.distill import completion_index
from dgr2.recipe.sft import encode
from dgr2.recipe.traces import evidence, rule_for, trace_entries, trace_strengths

BANDS = ((1, 10), (11, 50), (51, None))  # answer ranks; None: to the last
VIEWS = ("ar", "diffusion")
# how many ranks back an AR-view top token that repeats a slot had named it: whether the model forgets
# what it wrote long ago, or repeats what it has just written
BACK = ((1, 1), (2, 5), (6, 20), (21, None))
# how many slots not yet named share the strength of the one to name (the rank-1 target aside): the answer
# orders a tie shuffled or by slot (recipe.traces.sft_target), and a shuffled tie is a set to track
TIE_OPEN = ((1, 1), (2, 5), (6, 20), (21, None))


def bin_label(bins: tuple[tuple[int, int | None], ...], x: int) -> str:
    """The label of the bin of ``bins`` (``(lo, hi)``, the last open) that holds ``x``: "1", "2-5", "51+"."""
    for lo, hi in bins:
        if hi is None or x <= hi:
            return str(lo) if lo == hi else f"{lo}-{hi}" if hi else f"{lo}+"
    raise AssertionError("the last bin is open")


def back_bin(distance: int) -> str:
    return bin_label(BACK, distance)


def band_of(rank: int) -> str:
    return bin_label(BANDS, rank)


def tie_open(answer: list[int | None], rank: int, strength: dict[int, int]) -> str:
    """The :data:`TIE_OPEN` bin of how many slots, the one at ``rank`` included, share its strength (-1 for
    slots the trace did not reach) and are not named before it; ``"target"`` at rank 1."""
    if rank == 1:
        return "target"
    level = strength.get(answer[rank - 1], -1)
    named = set(answer[: rank - 1])
    return bin_label(TIE_OPEN, sum(strength.get(s, -1) == level for s in answer if s not in named))


@torch.no_grad()
def banned_slot_mass(model, vocab, source, examples, block: int, batch_size: int = 4, seed: int = 0) -> dict:
    """``{view: {band: {"positions", "mass", "argmax_banned"}}}`` and ``"all"`` per view (the means over
    every answer position); ``"repeat_back"``: of the AR view's top tokens that repeat a slot, how
    many named it 1, 2-5, 6-20 or 21+ ranks before; ``"tie_open"``: the AR view's positions and top
    tokens banned by how many open slots share the strength of the slot to name (:func:`tie_open`).
    The noisy copies' masks are drawn from ``seed`` (the same draws every call)."""
    from dgr2.model.output_head import OutputHead

    head = OutputHead(model, vocab)
    rule = rule_for(vocab, model.config.evidence_rule)
    sums: dict[tuple[str, str], list[float]] = {}
    back = {back_bin(lo): 0 for lo, _ in BACK}
    ties: dict[str, list[int]] = {"target": [0, 0], **{bin_label(TIE_OPEN, lo): [0, 0] for lo, _ in TIE_OPEN}}
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        encoded = [encode(vocab, source, ex, model.config.trace_len, rule=rule, ties=model.config.answer_ties)
                   for ex in chunk]
        b = collate_diffusion(encoded, block, vocab.mask, vocab.pad, gen, vocab)
        hidden = model.hidden_states(b.ids, positions=b.positions, mask=b.mask)
        predicts = completion_index(b, encoded)
        for i, enc in enumerate(encoded):
            rows, ranks, views = answer_outputs(vocab, enc, b.weights[i], predicts[i])
            if not rows:
                continue
            logits = head(hidden[i, rows])
            slot_cols = head.slot_cols[: enc.num_slots]
            ban = b.banned[i, rows, : enc.num_slots]
            mass = (logits.softmax(-1)[:, slot_cols] * ban).sum(-1)
            top = logits.argmax(-1)
            is_top = slot_cols[None, :] == top[:, None]
            top_banned = (is_top & ban).any(-1)
            top_slot = is_top.int().argmax(-1)
            answer = answer_slots(vocab, enc)
            evs = evidence(source.catalog, chunk[i].history, chunk[i].candidates, rule)
            strength = trace_strengths(evs, trace_entries(evs, model.config.trace_len))
            for r, view, m, t, slot in zip(ranks, views, mass.tolist(), top_banned.tolist(), top_slot.tolist(),
                                           strict=True):
                for key in ((view, band_of(r)), (view, "all")):
                    s = sums.setdefault(key, [0, 0.0, 0])
                    s[0] += 1
                    s[1] += m
                    s[2] += t
                if view == "ar":
                    tally = ties[tie_open(answer, r, strength)]
                    tally[0] += 1
                    tally[1] += t
                    if t:
                        back[back_bin(r - 1 - max(j for j in range(r - 1) if answer[j] == slot))] += 1
    out: dict = {view: {band: {"positions": n, "mass": round(m / n, 5), "argmax_banned": round(t / n, 5)}
                        for (v, band), (n, m, t) in sorted(sums.items()) if v == view} for view in VIEWS}
    out["repeat_back"] = back
    out["tie_open"] = {k: {"positions": n, "argmax_banned": round(t / n, 5) if n else None}
                       for k, (n, t) in ties.items()}
    return out


def answer_start(vocab, comp: list[int]) -> int:
    """Index in the completion of the answer's first slot (its length when there is no answer)."""
    return comp.index(vocab.answer) + 1 if vocab.answer in comp else len(comp)


def answer_slots(vocab, enc) -> list[int | None]:
    """The slots the row's answer names, rank 1 first."""
    comp = enc.ids[enc.prompt_len:]
    return [vocab.slot_of(t) for t in comp[answer_start(vocab, comp):]]


def answer_outputs(vocab, enc, weights: torch.Tensor, predicts: torch.Tensor) -> tuple[list[int], list[int], list[str]]:
    """The outputs of one row that predict an answer slot with a loss on them: (row index, rank, view).
    ``predicts``: the completion token each output predicts (:func:`recipe.distill.completion_index`); the
    clean stream (the row's first ``len(enc.ids)`` outputs) is the AR view, the noisy copies the block view."""
    comp = enc.ids[enc.prompt_len:]
    first = answer_start(vocab, comp)
    rows, ranks, views = [], [], []
    for idx in ((weights > 0) & (predicts >= first)).nonzero().squeeze(1).tolist():
        j = int(predicts[idx])
        if vocab.slot_of(comp[j]) is not None:
            rows.append(idx)
            ranks.append(j - first + 1)
            views.append("ar" if idx < len(enc.ids) else "diffusion")
    return rows, ranks, views


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dgr2.recipe.evaluate import add_user_arguments

    p.add_argument("--checkpoint", required=True, help="NAME[:VERSION_OR_ALIAS] in the store, or a folder")
    p.add_argument("--store", default=None, help="model store root (default: $DGR2_STORE or the shipped store)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $DGR2_DATA_DIR)")
    p.add_argument("--synthetic", action="store_true", help="the generated synthetic data instead")
    p.add_argument("--candidates", type=positive_int, default=100, help="candidates per user")
    p.add_argument("--neg-seed", type=int, default=12345, help="negative-sampling seed")
    p.add_argument("--block-size", type=positive_int, default=None,
                   help="block of the diffusion view (default: the checkpoint's)")
    add_user_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from dgr2.model_store import load_checkpoint, resolve_checkpoint
    from dgr2.recipe.data import eval_examples, load_source

    ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint, args.store))
    source = load_source(args.data_dir, args.synthetic)
    examples = eval_examples(source.sequences, source.item_ids, "valid", args.candidates, args.neg_seed,
                             args.limit, args.sample)
    block = args.block_size or ckpt.config.block_size
    out = banned_slot_mass(ckpt.model.float().eval(), ckpt.vocab, source, examples, block)
    out.update(checkpoint=ckpt.path.name, users=len(examples), block_size=block)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{ckpt.path.name}: {len(examples)} validation users, block {block}; per answer position, "
          "the probability on banned slots and how often the top token is one")
    print("| view | ranks | positions | mass on banned slots | top token banned |")
    print("|---|---|---|---|---|")
    for view in VIEWS:
        for band, s in out[view].items():
            print(f"| {view} | {band} | {s['positions']} | {s['mass']:.4f} | {s['argmax_banned']:.4f} |")
    back = out["repeat_back"]
    print("AR view, top token a repeated slot, named this many ranks before: "
          + ", ".join(f"{k}: {n}" for k, n in back.items()))
    print("AR view, top token banned, by open slots at the strength of the slot to name: "
          + ", ".join(f"{k}: {s['argmax_banned']} of {s['positions']}" for k, s in out["tie_open"].items()))
    return 0
