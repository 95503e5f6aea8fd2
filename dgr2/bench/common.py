"""What the decode and service benchmarks share: the machine description, peak memory, the prompts,
percentiles, comma lists and writing the JSON.

Peak memory (``peak_mem_mb``): on CUDA, ``torch.cuda.max_memory_allocated`` after a reset at the
start of each run (tensors only). On CPU, the peak resident set size of the benchmark process during
the run: Linux's ``VmHWM``, reset before each run by writing ``5`` to ``/proc/self/clear_refs``;
where that is not possible, ``resource.getrusage``'s ``ru_maxrss`` (the peak over the process's whole
life, so later runs can only repeat it). The CPU figure includes the interpreter, the prompts and
both checkpoints; ``machine["rss_baseline_mb"]`` is the resident size before the first run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from dgr2.flags import at_least
from dgr2.model.tokenizer import MAX_SLOTS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_list(text: str | None, kind: type = int) -> list:
    """``"1,8,32"`` -> ``[1, 8, 32]``; ``""`` or ``"none"`` -> ``[]`` (skip that sweep)."""
    if text is None or text.strip().lower() in ("", "none"):
        return []
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"not a comma list of {kind.__name__}: {text!r}") from None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of a non-empty list."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def pick_device(requested: str | None) -> str:
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    return device


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    """Where and with what the numbers were measured."""
    from dgr2.kernels.dispatch import backend

    info = {
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "name": torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "kernels": backend(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _vm_hwm_kb() -> int | None:
    try:
        m = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_mb() -> float | None:
    try:
        m = re.search(r"VmRSS:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return round(int(m.group(1)) / 1024, 1) if m else None


class PeakMemory:
    """Peak memory of one run (see the module docstring for what is measured on each device)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device
        if self.cuda:
            self.kind = "cuda max_memory_allocated (tensors), reset per run"
        elif self._reset_hwm():
            self.kind = "cpu peak RSS of the benchmark process (VmHWM reset per run via /proc/self/clear_refs)"
        else:
            self.kind = "cpu peak RSS of the benchmark process over its lifetime (getrusage ru_maxrss)"

    @staticmethod
    def _reset_hwm() -> bool:
        if _vm_hwm_kb() is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._reset_hwm()

    def read_mb(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        kb = _vm_hwm_kb() if "VmHWM" in self.kind else None
        if kb is None:  # ru_maxrss is in kB on Linux, bytes on macOS
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kb = kb // 1024 if sys.platform == "darwin" else kb
        return round(kb / 1024, 1)


def add_prompt_arguments(p: argparse.ArgumentParser, full: bool = True) -> None:
    """Where a benchmark's prompts come from; ``full`` adds the split, candidates and negative seed."""
    p.add_argument("--data-dir", default=None,
                   help="data folder, any layout of docs/data.md (default $DGR2_DATA_DIR; without either, refused "
                        "unless --synthetic)")
    p.add_argument("--synthetic", action="store_true",
                   help="the generated 20-candidate prompts (a smoke test: no shipped model was trained on them)")
    if full:
        p.add_argument("--split", choices=["valid", "test"], default="valid", help="leave-one-out split of the users")
        p.add_argument("--candidates", type=at_least(2, MAX_SLOTS), default=None,
                       help="candidates per request (default 100; 20 synthetic)")
        p.add_argument("--neg-seed", type=int, default=12345, help="negative-sampling seed")


def load_examples(data_dir: str | None, synthetic: bool, split: str, candidates: int | None, neg_seed: int,
                  n: int):
    """The first ``n`` users of a leave-one-out split: the data folder ``data_dir`` (or
    ``$DGR2_DATA_DIR``; Amazon Beauty for every published figure), or the generated synthetic data
    when asked for by name (it has 20-candidate prompts no shipped model was trained on, so a
    benchmark never falls back to it silently).
    Returns ``(examples, description)``."""
    from dgr2.errors import UserError
    from dgr2.recipe.data import DATA_ENV, eval_examples, load_source

    if not (synthetic or data_dir or os.environ.get(DATA_ENV)):
        raise UserError(f"no data folder: pass --data-dir (or set {DATA_ENV}) to measure on a data set's prompts, or "
                        "--synthetic for the generated 20-candidate set (a smoke test: the shipped models were "
                        "not trained on such prompts)")
    if candidates is None:
        candidates = 20 if synthetic else 100  # the synthetic catalog has only 60 items
    source = load_source(data_dir, synthetic)
    examples = eval_examples(source.sequences, source.item_ids, split, candidates, neg_seed, n)
    # the folder's name, e.g. amazon-beauty
    desc = {"prompts": "synthetic" if synthetic else Path(data_dir or os.environ[DATA_ENV]).name, "split": split,
            "candidates": candidates, "neg_seed": neg_seed}
    return examples, desc


def command_line(args) -> str:
    """The command as typed, for the record: ``dgr2 ...`` as the CLI saw it (``args.command_line``), else argv."""
    return getattr(args, "command_line", None) or shlex.join(sys.argv)


def write_json(path: str | os.PathLike, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
