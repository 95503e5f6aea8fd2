"""``dgr2 bench decode``: decode throughput of AR vs block diffusion, same checkpoint pair, same prompts.

    dgr2 bench decode --quick --json                      # the default point only, < 1 min on a CPU
    dgr2 bench decode --json --out docs/benchmarks/decode-cpu.json --plot docs/decode-throughput.png

Both decoders run the same model code, KV cache and kernels (``dgr2/model/``, ``dgr2/kernels/``); only the
decode loop differs. Prompts: the first users of the validation split of Amazon Beauty
(``--data-dir`` or ``$DGR2_DATA_DIR``), else the synthetic data. What is timed: the decoder call on
already rendered prompts (prefill included; tokenization and the guard excluded), CUDA-synchronized,
after one untimed warm-up batch per setting; AR and diffusion alternate inside every repeat round
(reversed order on odd rounds) and each figure is the median over ``--repeats``. A request's latency
is the wall time of the batch it was decoded in.

Points: at the **default point** both decoders stop naturally (``<eos>``) within the completion
budget of the checkpoint's trace length; batch sizes, block sizes and thresholds are swept there.
The **length sweep** makes both decoders generate exactly L tokens with the stop ignored
(``DecodeConfig.ignore_eos``), for every batch size. NDCG@10 next to each speed comes from a
separate, untimed pass of the engine (guard included, as ``dgr2 eval``) over a fixed sample of
``--ndcg-users`` users at the same decoder settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dgr2.bench.common import (
    PeakMemory,
    add_prompt_arguments,
    command_line,
    load_examples,
    machine_info,
    parse_list,
    percentile,
    pick_device,
    rss_mb,
    write_json,
)
from dgr2.bench.pass_time import Clock, clocked, section_rates, split
from dgr2.flags import add_pass_economy_arguments
from dgr2.model.decoding import DecodeConfig, completion_budget
from dgr2.model.engine import DECODE_FUNCTIONS, Reranker
from dgr2.model.prompt import render_prompt
from dgr2.model.tokenizer import MAX_HISTORY

log = logging.getLogger("dgr2.bench")

DEFAULT_LENGTHS = "64,128,256,512,1024"
DEFAULT_BATCH_SIZES = "1,8,32"
DEFAULT_BLOCK_SIZES = "8,16,32,64"
DEFAULT_THRESHOLDS = "0.7,0.8,0.9,0.95"
QUICK = {"requests": 2, "repeats": 3, "ndcg_users": 8}
FULL = {"requests": 8, "repeats": 3, "ndcg_users": 100}


class Stopped(Exception):
    """SIGTERM or the time budget: stop measuring and report what is done."""


@dataclass
class Side:
    """One decoder's checkpoint and the benchmark prompts rendered with its own vocabulary."""

    decoder: str
    ckpt: object  # model_store.Checkpoint
    trace_len: int
    ids: list[list[int]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    answer_threshold: float | None = None  # override of the checkpoint's (diffusion)
    fuse_commit: bool = True  # diffusion: commit pass fused with the next block's first step
    answer_claims: bool | None = None  # diffusion: DecodeConfig's when None
    claims_from_rank: int | None = None  # diffusion: DecodeConfig's when None
    block_cache: bool | None = None  # diffusion: DecodeConfig's when None
    threads: int | None = None  # torch CPU threads while this decoder runs (None: the process's)

    def use_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def render(self, examples) -> None:
        """The prompts of ``examples`` in this checkpoint's vocabulary."""
        rendered = [render_prompt(self.ckpt.vocab, self.ckpt.catalog, e.history, e.candidates, MAX_HISTORY)
                    for e in examples]
        self.ids, self.slots = [r.ids for r in rendered], [r.num_slots for r in rendered]

    def config(self, length: int | None, block: int | None, threshold: float | None, kmax: int) -> DecodeConfig:
        common = dict(block_size=block, threshold=threshold, answer_threshold=self.answer_threshold,
                      fuse_commit=self.fuse_commit, answer_claims=self.answer_claims,
                      claims_from_rank=self.claims_from_rank, block_cache=self.block_cache)
        if length is None:  # natural stop within the completion budget of the trained trace length
            return DecodeConfig.for_model(self.ckpt.config, max_new_tokens=completion_budget(self.trace_len, kmax),
                                          **common)
        return DecodeConfig.for_model(self.ckpt.config, max_new_tokens=length, ignore_eos=True, **common)


@dataclass
class Setting:
    decoder: str
    block: int | None  # None for AR (it has no block or threshold)
    threshold: float | None
    seconds: list[float] = field(default_factory=list)  # per repeat
    tokens: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # per request, all repeats
    passes: int = 0
    generated: int = 0
    requests: int = 0
    peak_mb: float = 0.0
    profile: dict = field(default_factory=dict)  # from one clocked decode: pass time split, tokens per section


@dataclass
class Group:
    """Settings measured against each other: one AR run and the diffusion runs at one length and batch."""

    length: int | None  # None: natural stop
    batch: int
    diffusion: list[tuple[int, float]]


def plan(quick: bool, lengths: list[int], batches: list[int], blocks: list[int], thresholds: list[float],
         block0: int, threshold0: float) -> list[Group]:
    """Default point first (its block and threshold sweeps included), then the length sweep by length
    (every batch size per length, so a cut-short run still has whole curves), then the default point
    at the other batch sizes."""
    if quick:
        return [Group(None, 1, [(block0, threshold0)])]
    b0 = batches[0] if batches else 1
    sweep = [(block0, threshold0)] + [(s, threshold0) for s in blocks if s != block0] + \
        [(block0, t) for t in thresholds if t != threshold0]
    groups = [Group(None, b0, sweep)]
    groups += [Group(L, b, [(block0, threshold0)]) for L in lengths for b in batches]
    groups += [Group(None, b, [(block0, threshold0)]) for b in batches[1:]]
    return groups


def decode_batches(side: Side, cfg: DecodeConfig, batch: int, n: int, device: str, length: int | None):
    """Decode the first ``n`` prompts in batches; yields ``(seconds, outputs)`` per batch."""
    decode = DECODE_FUNCTIONS[side.decoder]
    model, vocab = side.ckpt.model, side.ckpt.vocab
    side.use_threads()
    for start in range(0, n, batch):
        ids, slots = side.ids[start: start + batch], side.slots[start: start + batch]
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        outs = decode(model, vocab, ids, slots, cfg)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if length is not None and any(o.generated_tokens != length for o in outs):
            got = sorted({o.generated_tokens for o in outs})
            raise RuntimeError(f"{side.decoder} generated {got} tokens, not exactly {length} (ignore_eos)")
        yield dt, outs


def measure_group(group: Group, sides: dict[str, Side], requests: int, repeats: int, device: str,
                  deadline: float | None) -> list[Setting]:
    if deadline is not None and time.monotonic() > deadline:
        raise Stopped("time budget spent")
    n = math.ceil(max(requests, group.batch) / group.batch) * group.batch  # whole batches only
    kmax = max(sides["ar"].slots[:n])
    settings = [Setting("ar", None, None)] + [Setting("diffusion", s, t) for s, t in group.diffusion]
    configs = [sides[s.decoder].config(group.length, s.block, s.threshold, kmax) for s in settings]
    memory = PeakMemory(device)
    for s, cfg in zip(settings, configs, strict=True):  # warm-up: one untimed batch per setting
        for _ in decode_batches(sides[s.decoder], cfg, group.batch, group.batch, device, group.length):
            pass
    for r in range(repeats):
        order = list(zip(settings, configs, strict=True))
        for s, cfg in order if r % 2 == 0 else order[::-1]:  # alternate, and alternate who goes first
            if deadline is not None and time.monotonic() > deadline:
                raise Stopped("time budget spent")
            memory.reset()
            total, tokens, passes = 0.0, 0, 0
            for dt, outs in decode_batches(sides[s.decoder], cfg, group.batch, n, device, group.length):
                total += dt
                tokens += sum(o.generated_tokens for o in outs)
                passes += sum(o.forward_passes for o in outs)
                s.latencies_ms += [1000 * dt] * len(outs)
            s.seconds.append(total)
            s.tokens.append(tokens)
            s.passes, s.generated, s.requests = passes, tokens, n
            s.peak_mb = max(s.peak_mb, memory.read_mb())
    for s, cfg in zip(settings, configs, strict=True):
        s.profile = profile_batch(sides[s.decoder], cfg, group.batch, device)
    return settings


def profile_batch(side: Side, cfg: DecodeConfig, batch: int, device: str) -> dict:
    """One clocked, untimed decode of the first batch: where a pass's time goes, and tokens per pass
    in the trace and in the answer."""
    model, vocab = side.ckpt.model, side.ckpt.vocab
    side.use_threads()
    clock = Clock()
    with clocked(model, clock):
        t0 = time.perf_counter()
        outs = DECODE_FUNCTIONS[side.decoder](model, vocab, side.ids[:batch], side.slots[:batch], cfg,
                                              record_passes=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    return {"pass_time_ms": split(clock, wall, max(o.forward_passes for o in outs)), **section_rates(outs, vocab)}


class Ndcg:
    """NDCG@10 of the guarded ranking on a fixed user sample, once per decoder setting (cached)."""

    def __init__(self, sides: dict[str, Side], examples, batch_size: int) -> None:
        self.sides, self.examples, self.batch_size = sides, examples, batch_size
        self.cache: dict[tuple, float | None] = {}

    def __call__(self, decoder: str, length: int | None, block: int | None, threshold: float | None) -> float | None:
        key = (decoder, length, block, threshold)
        if not self.examples:
            return None
        if key not in self.cache:
            from dgr2.recipe.evaluate import evaluate

            side = self.sides[decoder]
            kmax = max(len(e.candidates) for e in self.examples)
            cfg = side.config(length, block, threshold, kmax)
            reranker = Reranker(side.ckpt.model, side.ckpt.vocab, side.ckpt.catalog, decoder, cfg)
            self.cache[key] = evaluate(reranker, self.examples, self.batch_size, progress=False)["ndcg@10"]
        return self.cache[key]


def run_record(s: Setting, group: Group, ndcg: Ndcg) -> dict:
    return {
        "decoder": s.decoder,
        "stop": "natural" if group.length is None else "ignored",
        "output_length": group.length,
        "batch_size": group.batch,
        "block_size": s.block,
        "threshold": s.threshold,
        "requests": s.requests,
        "repeats": len(s.seconds),
        "tokens_per_s": round(statistics.median(t / sec for t, sec in zip(s.tokens, s.seconds, strict=True)), 2),
        "requests_per_s": round(statistics.median(s.requests / sec for sec in s.seconds), 3),
        "forward_passes": round(s.passes / s.requests, 2),  # per request, prefill included
        "tokens_per_forward": round(s.generated / max(s.passes, 1), 4),
        "generated_tokens_mean": round(s.generated / s.requests, 2),
        "p50_ms": round(percentile(s.latencies_ms, 50), 2),
        "p99_ms": round(percentile(s.latencies_ms, 99), 2),
        "peak_mem_mb": s.peak_mb,
        "ndcg@10": ndcg(s.decoder, group.length, s.block, s.threshold),
        **s.profile,
    }


def speedups(runs: list[dict]) -> list[dict]:
    """Diffusion over AR at the same output length and batch size: generated tokens/s (``ratio``) and
    requests/s (``requests_ratio``; at the natural stop the two decoders generate different lengths)."""
    ar = {(r["output_length"], r["batch_size"]): r for r in runs if r["decoder"] == "ar"}
    out = []
    for r in runs:
        base = ar.get((r["output_length"], r["batch_size"]))
        if r["decoder"] != "diffusion" or base is None:
            continue
        out.append({"output_length": r["output_length"], "batch_size": r["batch_size"],
                    "block_size": r["block_size"], "threshold": r["threshold"],
                    "ratio": round(r["tokens_per_s"] / base["tokens_per_s"], 3),
                    "requests_ratio": round(r["requests_per_s"] / base["requests_per_s"], 3)})
    return out


def load_side(decoder: str, ref: str, store_root: str | None, model: str, device: str,
              trace_len: int | None) -> Side:
    from dgr2.model_store import load_checkpoint, open_store

    path = Path(ref) if Path(ref).is_dir() else open_store(store_root).resolve(model, ref)
    ckpt = load_checkpoint(path, device=device)
    if trace_len:  # the engine caps its budget by the config's trace length
        ckpt.model.config = ckpt.model.config.replace(trace_len=trace_len)
    return Side(decoder, ckpt, ckpt.config.trace_len)


def apply_diffusion_arguments(side: Side, args: argparse.Namespace) -> None:
    """The pass-economy flags (:func:`dgr2.flags.add_pass_economy_arguments`) onto the diffusion side."""
    side.answer_claims, side.claims_from_rank = args.answer_claims, args.claims_from_rank
    side.block_cache = args.block_cache


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dgr2.model_store import DEFAULT_MODEL

    p.add_argument("--store", default=None, help="model store root (default: $DGR2_STORE or the shipped store)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name in the store (default %(default)s)")
    p.add_argument("--ar", default="ar", help="AR checkpoint: version or alias in the store, or a checkpoint "
                                              "folder (default %(default)s)")
    p.add_argument("--diffusion", default="diffusion", help="diffusion checkpoint, likewise (default %(default)s)")
    add_prompt_arguments(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op CPU threads (default torch's)")
    p.add_argument("--ar-threads", type=int, default=None,
                   help="torch CPU threads while AR decodes (default --torch-threads): each decoder at its fastest")
    p.add_argument("--diffusion-threads", type=int, default=None,
                   help="torch CPU threads while block diffusion decodes (default --torch-threads)")
    p.add_argument("--trace-len", type=int, default=None,
                   help="trace length for the natural-stop budget (default: the checkpoint's, else 128)")
    p.add_argument("--quick", action="store_true",
                   help="only the default point: natural stop, batch 1, the checkpoint's block and threshold "
                        f"(32, 0.9); defaults --requests {QUICK['requests']} --repeats {QUICK['repeats']} "
                        f"--ndcg-users {QUICK['ndcg_users']}")
    p.add_argument("--lengths", default=DEFAULT_LENGTHS, help="fixed output lengths, stop ignored; '' skips "
                                                              "(default %(default)s)")
    p.add_argument("--batch-sizes", default=DEFAULT_BATCH_SIZES, help="batch sizes; the first is the default "
                                                                      "point's (default %(default)s)")
    p.add_argument("--block-sizes", default=DEFAULT_BLOCK_SIZES, help="diffusion block sizes swept at the default "
                                                                      "point (default %(default)s)")
    p.add_argument("--thresholds", default=DEFAULT_THRESHOLDS, help="diffusion thresholds swept at the default "
                                                                    "point (default %(default)s)")
    p.add_argument("--answer-threshold", type=float, default=None,
                   help="diffusion threshold inside the answer (default: the checkpoint's; 1 = off)")
    p.add_argument("--separate-commit", action="store_true",
                   help="diffusion: commit each block in its own causal pass (the unfused reference)")
    add_pass_economy_arguments(p)
    p.add_argument("--requests", type=int, default=None,
                   help=f"requests per timed run, rounded up to whole batches (default {FULL['requests']})")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats per run (default {FULL['repeats']})")
    p.add_argument("--ndcg-users", type=int, default=None,
                   help=f"fixed user sample for NDCG@10; 0 skips it (default {FULL['ndcg_users']})")
    p.add_argument("--ndcg-batch-size", type=int, default=32, help="batch size of the untimed NDCG pass")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="start no new run after this many seconds; the output says it is incomplete")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (else a table)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    p.add_argument("--plot", type=Path, default=None,
                   help="write a PNG: throughput and diffusion/AR ratio vs output length, one line per batch size")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.requests < 1 or args.repeats < 1 or args.ndcg_users < 0:
        raise SystemExit("--requests and --repeats must be >= 1, --ndcg-users >= 0")
    lengths, batches = parse_list(args.lengths), parse_list(args.batch_sizes)
    blocks, thresholds = parse_list(args.block_sizes), parse_list(args.thresholds, float)
    if not args.quick and not batches:
        raise SystemExit("--batch-sizes needs at least one batch size")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = pick_device(args.device)

    sides = {"ar": load_side("ar", args.ar, args.store, args.model, device, args.trace_len),
             "diffusion": load_side("diffusion", args.diffusion, args.store, args.model, device, args.trace_len)}
    dcfg = sides["diffusion"].ckpt.config
    sides["diffusion"].answer_threshold = args.answer_threshold
    sides["diffusion"].fuse_commit = not args.separate_commit
    apply_diffusion_arguments(sides["diffusion"], args)
    sides["ar"].threads, sides["diffusion"].threads = args.ar_threads, args.diffusion_threads
    groups = plan(args.quick, lengths, batches, blocks, thresholds, dcfg.block_size, dcfg.threshold)
    for g in groups:
        for block, _ in g.diffusion:
            if g.length is not None and g.length % block:
                raise SystemExit(f"output length {g.length} is not a multiple of the block size {block}: the "
                                 "diffusion decoder decodes whole blocks, so it could not stop at exactly L")
    n_timed = max(math.ceil(max(args.requests, g.batch) / g.batch) * g.batch for g in groups)
    examples, prompts = load_examples(args.data_dir, args.synthetic, args.split, args.candidates, args.neg_seed,
                                      max(n_timed, args.ndcg_users))
    if len(examples) < n_timed:
        raise SystemExit(f"only {len(examples)} users for {n_timed} requests per run")
    for side in sides.values():
        side.render(examples[:n_timed])
    ndcg = Ndcg(sides, examples[: args.ndcg_users], args.ndcg_batch_size)

    machine = machine_info(device)
    memory = PeakMemory(device)
    machine.update(
        checkpoints={d: s.ckpt.path.name for d, s in sides.items()}, model=args.model,
        parameters=sum(p.numel() for p in sides["ar"].ckpt.model.parameters()),
        trace_len={d: s.trace_len for d, s in sides.items()}, **prompts,
        answer_threshold=args.answer_threshold if args.answer_threshold is not None else dcfg.answer_threshold,
        fuse_commit=not args.separate_commit,
        threads={d: s.threads or torch.get_num_threads() for d, s in sides.items()},
        decode_settings={d: {k: v for k, v in vars(s.config(None, None, None, 100)).items()
                             if k not in ("max_new_tokens", "ignore_eos", "seed", "temperature")}
                         for d, s in sides.items()},
        requests=args.requests, repeats=args.repeats, ndcg_users=len(ndcg.examples),
        peak_mem=memory.kind, rss_baseline_mb=rss_mb() if not device.startswith("cuda") else None,
        timed="decoder call on rendered prompts (prefill included; tokenization and guard excluded)",
        same_code="AR and diffusion share the model code, KV cache and kernels",
        command=command_line(args),
    )

    deadline = started + args.time_budget_s if args.time_budget_s else None
    runs: list[dict] = []
    done = 0

    def on_term(signum, frame):
        raise Stopped("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for g in groups:
            settings = measure_group(g, sides, args.requests, args.repeats, device, deadline)
            for s in settings:
                runs.append(run_record(s, g, ndcg))
                r = runs[-1]
                log.info("%s L=%s B=%d block=%s thr=%s: %.1f tok/s, %.2f req/s, p50 %.0f ms, ndcg@10 %s",
                         r["decoder"], r["output_length"] or "natural", r["batch_size"], r["block_size"],
                         r["threshold"], r["tokens_per_s"], r["requests_per_s"], r["p50_ms"], r["ndcg@10"])
            done += 1
    except Stopped as e:
        log.warning("stopped (%s) after %d of %d groups; the output is incomplete", e, done, len(groups))
    finally:
        signal.signal(signal.SIGTERM, previous)
    machine.update(incomplete=done < len(groups), groups_done=done, groups_planned=len(groups),
                   wall_s=round(time.monotonic() - started, 1))
    result = {"machine": machine, "runs": runs, "speedup": speedups(runs)}

    if args.out:
        write_json(args.out, result)
    if args.plot:
        from dgr2.bench.plot import plot_lengths

        if not plot_lengths(result, args.plot):
            log.warning("no fixed-length runs: nothing to plot (--lengths is empty or --quick)")
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


def print_table(result: dict) -> None:
    from dgr2.bench.kernels.common import print_rows

    keys = ("decoder", "output_length", "batch_size", "block_size", "threshold", "tokens_per_s", "requests_per_s",
            "tokens_per_forward", "p50_ms", "p99_ms", "peak_mem_mb", "ndcg@10")
    print_rows([{k: ("natural" if k == "output_length" and r[k] is None else r[k]) for k in keys}
                for r in result["runs"]])
    print()
    print_rows(result["speedup"])
    m = result["machine"]
    print(f"\nmachine: {m['name']} ({m['device']}, {m['torch_threads']} torch threads, kernels {m['kernels']}); "
          f"prompts: {m['prompts']} {m['split']}, {m['candidates']} candidates; peak memory: {m['peak_mem']}")
