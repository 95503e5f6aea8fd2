"""What every training stage shares: distributed setup, the run folder (resumable state and the
metrics log), the learning-rate schedule and the common command-line flags.

One process or ``torchrun --nproc-per-node N`` (DDP; gloo on CPU, nccl on GPU). Every rank builds
the same global batch and trains on its shard, and losses are normalised by the global token
weight, so N processes take the same steps as one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class RunDir:
    """``runs/<name>/``: ``state.pt`` (weights, optimizer, step; replaced atomically) and ``log.jsonl``."""

    def __init__(self, path: str | Path, main: bool = True) -> None:
        self.path = Path(path)
        self.main = main
        if main:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def state_file(self) -> Path:
        return self.path / "state.pt"

    def save_state(self, state: dict) -> None:
        if not self.main:
            return
        tmp = self.state_file.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_file)

    def load_state(self) -> dict | None:
        if not self.state_file.is_file():
            return None
        return torch.load(self.state_file, map_location="cpu", weights_only=False)

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.path / "log.jsonl", "a") as f:
                f.write(json.dumps({"time": round(time.time(), 1), **record}) + "\n")


def add_common_arguments(p: argparse.ArgumentParser, default_run: str) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", default=None, help="Amazon Beauty folder (default: $DGR2_DATA_DIR)")
    data.add_argument("--synthetic", action="store_true", help="train on the generated synthetic data (tests)")
    data.add_argument("--candidates", type=int, default=100, help="candidates per example (target + negatives)")
    data.add_argument("--neg-seed", type=int, default=12345, help="negative-sampling seed of the validation lists")
    data.add_argument("--trace-len", type=int, default=None, help="maximum trace tokens (default 128)")
    run = p.add_argument_group("run")
    run.add_argument("--run-dir", default=f"runs/{default_run}", help="resumable state and metrics log")
    run.add_argument("--store", default=None, help="model store root (default: $DGR2_STORE or the shipped store)")
    run.add_argument("--name", default=None, help="model name in the store (default beauty-gr2)")
    run.add_argument("--seed", type=int, default=0, help="training seed (example order, init)")
    run.add_argument("--steps", type=int, default=None, help="optimizer steps")
    run.add_argument("--batch-size", type=int, default=8, help="global batch (sequences per step)")
    run.add_argument("--lr", type=float, default=None, help="peak learning rate")
    run.add_argument("--time-budget-min", type=float, default=None,
                     help="stop (and save) once this many minutes have passed")
    run.add_argument("--save-every", type=int, default=50, help="steps between resumable saves")
    run.add_argument("--eval-every", type=int, default=100, help="steps between validation runs")
    run.add_argument("--val-users", type=int, default=200, help="validation users per validation run")
    run.add_argument("--fresh", action="store_true", help="ignore a saved state in --run-dir and start over")
