"""Shared plumbing of the kernel benchmarks: arguments, timing, the table and the JSON file.

Timing: median of ``--reps`` runs. On CUDA each run is timed with CUDA events after writing a
256 MiB buffer, so that no run finds its inputs in L2 (an H100's L2 would hold a whole decode KV
cache and inflate the bandwidth). Bandwidths are *useful* bytes (what the op must read and write
at least, listed per benchmark) over time, the same count for every implementation.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
TRITON_NEEDS_CUDA = "not run: the Triton path needs --device cuda (the CPU interpreter is no benchmark)"


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="write results to docs/benchmarks/kernels-<device>.json")
    p.add_argument("--out", type=Path, help="write results to this JSON file instead (implies --json)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per case (default 50 cuda, 5 cpu)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    if args.reps is None:
        args.reps = 50 if args.device == "cuda" else 5
    return args


def triton_ready(device: str) -> bool:
    """Run the Triton kernels only compiled, on CUDA."""
    if device != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def device_name(device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or "cpu")
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-").lower() or device


def median_seconds(fn: Callable[[], object], device: str, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    if device != "cuda":
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure(impl: str, fn, device: str, reps: int, case: dict, nbytes: int, flops: int | None = None) -> dict:
    sec = median_seconds(fn, device, reps)
    row = {**case, "impl": impl, "median_us": round(sec * 1e6, 2), "GB/s": round(nbytes / sec / 1e9, 2)}
    if flops is not None:
        row["TFLOP/s"] = round(flops / sec / 1e12, 3)
    return row


def print_rows(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).rjust(widths[k]) for k in keys))


def finish(args: argparse.Namespace, op: str, rows: list[dict], notes: dict) -> None:
    """Print the table and, if asked, merge this op's results into the JSON file (one file, all ops)."""
    print_rows(rows)
    for k, v in notes.items():
        print(f"{k}: {v}")
    if not (args.json or args.out):
        return
    path = args.out or RESULTS_DIR / f"kernels-{device_name(args.device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(device=device_name(args.device), torch=torch.__version__)
    data.setdefault("ops", {})[op] = {"notes": notes, "rows": rows}
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"results written to {path}")
