"""Where decode time goes, per decoder: ``python -m dgr2.bench.profile_decode [--users N] [--out FILE]``.

Decodes the same prompts with the AR and the block-diffusion checkpoints (as ``dgr2 bench decode``
loads them) and splits each decoder's wall time into
  network   ``Transformer.hidden_states`` (embedding, attention with the KV cache, MLPs),
  head      the output-vocabulary projection (``OutputHead``),
  decoder   everything else: constraints, unmasking, cache bookkeeping, Python,
with the number of forward passes and the cost of one, then the top operators of a
``torch.profiler`` run. The answer to "why is diffusion not faster" is usually in the first table:
a denoising pass costs more than an AR step (it runs a whole block), so the throughput ratio is
about tokens-per-forward divided by that cost ratio.
"""

from __future__ import annotations

import argparse
import io
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch

from dgr2.bench.common import add_prompt_arguments, command_line, load_examples, machine_info, pick_device
from dgr2.bench.decode import apply_diffusion_arguments, load_side
from dgr2.bench.pass_time import Clock, clocked, section_rates
from dgr2.flags import add_pass_economy_arguments
from dgr2.model.engine import DECODE_FUNCTIONS


def profile_side(side, cfg, prompts, batch: int) -> dict:
    decode = DECODE_FUNCTIONS[side.decoder]
    model, vocab = side.ckpt.model, side.ckpt.vocab
    ids, slots = side.ids[: len(prompts)], side.slots[: len(prompts)]
    decode(model, vocab, ids[:batch], slots[:batch], cfg)  # warm-up
    clock = Clock()
    tokens = seq_passes = passes = 0  # passes: of the batch (a pass serves every row still running)
    every = []
    with clocked(model, clock):
        t0 = time.perf_counter()
        for s in range(0, len(ids), batch):
            outs = decode(model, vocab, ids[s: s + batch], slots[s: s + batch], cfg, record_passes=True)
            every += outs
            tokens += sum(o.generated_tokens for o in outs)
            seq_passes += sum(o.forward_passes for o in outs)
            passes += max(o.forward_passes for o in outs)
        wall = time.perf_counter() - t0
    network, head = clock.seconds.get("network", 0.0), clock.seconds.get("head", 0.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        decode(model, vocab, ids[:batch], slots[:batch], cfg)
    return {
        "decoder": side.decoder, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
        "forward_passes": passes, "tokens_per_forward": tokens / max(seq_passes, 1),
        "ms_per_pass": 1000 * wall / max(passes, 1),
        "network_s": network, "head_s": head, "decoder_s": wall - network - head,
        "network_calls": clock.calls.get("network", 0), **section_rates(every, vocab),
        "top_ops": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15),
    }


def report(results: list[dict], header: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        print(header)
        print(f"{'decoder':10} {'tok/s':>8} {'passes':>7} {'tok/pass':>8} {'trace':>6} {'answer':>6} "
              f"{'ms/pass':>8} {'network':>8} {'head':>6} {'decoder':>8}")
        for r in results:
            w = r["wall_s"]
            print(f"{r['decoder']:10} {r['tokens_per_s']:8.1f} {r['forward_passes']:7d} "
                  f"{r['tokens_per_forward']:8.2f} {r['tokens_per_forward_trace'] or 0:6.2f} "
                  f"{r['tokens_per_forward_answer'] or 0:6.2f} {r['ms_per_pass']:8.2f} {r['network_s'] / w:8.0%} "
                  f"{r['head_s'] / w:6.0%} {r['decoder_s'] / w:8.0%}")
        print("(tok/pass per section: trace before <answer>, answer from it on)")
        if len(results) == 2:
            ar, dif = results
            print(f"\ndiffusion/AR: throughput {dif['tokens_per_s'] / ar['tokens_per_s']:.2f}x = tokens per pass "
                  f"{dif['tokens_per_forward'] / ar['tokens_per_forward']:.2f}x / cost per pass "
                  f"{dif['ms_per_pass'] / ar['ms_per_pass']:.2f}x")
        for r in results:
            print(f"\n--- top operators, {r['decoder']} (one batch, torch.profiler, self CPU time) ---")
            print(r["top_ops"])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    from dgr2.model_store import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="python -m dgr2.bench.profile_decode", description=__doc__.split("\n")[0])
    p.add_argument("--store", default=None, help="model store root (default: the shipped store)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--ar", default="ar", help="AR checkpoint version, alias or folder")
    p.add_argument("--diffusion", default="diffusion", help="diffusion checkpoint version, alias or folder")
    add_prompt_arguments(p, full=False)
    p.add_argument("--trace-len", type=int, default=None,
                   help="trace length for the natural-stop budget (default: the checkpoint's)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op CPU threads")
    p.add_argument("--users", type=int, default=4, help="prompts decoded per decoder (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default=None)
    add_pass_economy_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = p.parse_args(argv)
    if args.users < 1 or args.batch_size < 1:
        raise SystemExit("--users and --batch-size must be >= 1")

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = pick_device(args.device)
    sides = [load_side(d, ref, args.store, args.model, device, args.trace_len)
             for d, ref in (("ar", args.ar), ("diffusion", args.diffusion))]
    examples, _ = load_examples(args.data_dir, args.synthetic, "valid", None, 12345, args.users)
    results = []
    apply_diffusion_arguments(sides[1], args)
    for side in sides:
        side.render(examples)
        cfg = side.config(None, None, None, max(side.slots))  # natural stop, the checkpoint's block/threshold
        results.append(profile_side(side, cfg, examples, args.batch_size))
    info = machine_info(device)
    header = (f"# {command_line(args)}\n# {info['name']}, {info['torch_threads']} torch threads, kernels: "
              f"{info['kernels']}; checkpoints {', '.join(s.ckpt.path.name for s in sides)}; "
              f"{len(examples)} validation users, batch {args.batch_size}, natural stop\n")
    text = report(results, header)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
