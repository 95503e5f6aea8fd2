"""What every training stage shares: distributed setup, the run folder (resumable state and the
metrics log), the learning-rate schedule and the common command-line flags.

One process or ``torchrun --nproc-per-node N`` (DDP; gloo on CPU, nccl on GPU). Every rank builds
the same global batch and trains on its shard, and losses are normalised by the global token
weight, so N processes take the same steps as one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from dgr2.errors import UserError
from dgr2.flags import at_least, non_negative, positive_int
from dgr2.model.config import DEFAULT_TRACE_LEN
from dgr2.model.tokenizer import MAX_SLOTS
from dgr2.recipe.losses import AGAINST, ValidityTerm


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


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--loader-workers``, for the stages whose batches are built without the model."""
    g = p.add_argument_group("device")
    g.add_argument("--device", default="cpu",
                   help="cpu or cuda (under torchrun each rank takes cuda:LOCAL_RANK); bf16 autocast on cuda")
    g.add_argument("--loader-workers", type=at_least(0), default=0,
                   help="processes that build batches ahead of the step (0: inline; use several on a GPU)")


def peak_lr(args: argparse.Namespace, defaults: dict) -> float:
    """``--lr`` when given (0 included: a run that must not move the weights), else the stage default."""
    return defaults["lr"] if args.lr is None else args.lr


def training_device(args: argparse.Namespace) -> torch.device:
    """The device this rank trains on; a clear error when CUDA is asked for and absent."""
    name = getattr(args, "device", "cpu") or "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: no CUDA device is visible to torch")
        if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if ":" in name:
            torch.cuda.set_device(torch.device(name))
    elif name != "cpu":
        raise SystemExit(f"--device {name}: expected cpu or cuda[:N]")
    return torch.device(name)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def lr_at(step: int, total: int, base: float, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``, over whichever runs out first: the
    steps or the time budget (``time_fraction`` of it spent). Without the second, a run stopped
    by ``--time-budget-min`` long before ``--steps`` would end at a high learning rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class RunDir:
    """``runs/<name>/``: ``state.pt`` (weights, optimizer, step; replaced atomically) and ``log.jsonl``."""

    def __init__(self, path: str | Path, main: bool = True) -> None:
        self.path = Path(path)
        self.main = main
        if main:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a file of that name, or no permission: the flag's value is wrong
                raise UserError(f"--run-dir {self.path}: {e.strerror}; give a folder path") from None

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

    def rewind_log(self, step: int) -> None:
        """The log up to ``step``, one record per step (the latest): a run resumed from a state saved at
        ``step`` logs the later steps again, and a log with two records of a step would plot and
        summarise both. Also what a saved copy of a run keeps (``scripts/lib/run_state.sh``)."""
        log = self.path / "log.jsonl"
        if not self.main or not log.is_file():
            return
        lines = log.read_text().splitlines(keepends=True)
        latest = {json.loads(line).get("step", 0): line for line in lines}
        kept = [latest[s] for s in sorted(latest) if s <= step]
        if kept != lines:
            tmp = log.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, log)

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.path / "log.jsonl", "a") as f:
                f.write(json.dumps({"time": round(time.time(), 1), **record}) + "\n")


def add_common_arguments(p: argparse.ArgumentParser, default_run: str) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", default=None,
                      help="data folder, any layout of docs/data.md (default: $DGR2_DATA_DIR)")
    data.add_argument("--synthetic", action="store_true", help="train on the generated synthetic data (tests)")
    data.add_argument("--candidates", type=at_least(2, MAX_SLOTS), default=100,
                      help="candidates per example (target + negatives)")
    data.add_argument("--neg-seed", type=int, default=12345, help="negative-sampling seed of the validation lists")
    data.add_argument("--trace-len", type=positive_int, default=None,
                      help=f"maximum trace tokens (default: the parent checkpoint's; {DEFAULT_TRACE_LEN}, every "
                           "candidate, for a new model); stored in the checkpoint's config.json")
    run = p.add_argument_group("run")
    run.add_argument("--run-dir", default=f"runs/{default_run}", help="resumable state and metrics log")
    run.add_argument("--store", default=None, help="model store root (default: $DGR2_STORE or the shipped store)")
    run.add_argument("--name", default=None, help="model name in the store (default beauty-gr2)")
    run.add_argument("--version", default=None,
                     help="version name in the store (default: the stage's, e.g. ar-small-s0 or cft-<parent>)")
    run.add_argument("--seed", type=int, default=0, help="training seed (example order, init)")
    run.add_argument("--steps", type=positive_int, default=None, help="optimizer steps")
    run.add_argument("--batch-size", type=positive_int, default=8, help="global batch (sequences per step)")
    run.add_argument("--lr", type=float, default=None, help="peak learning rate")
    run.add_argument("--time-budget-min", type=float, default=None,
                     help="stop (and save) once this many minutes of this invocation have passed")
    run.add_argument("--schedule-to-budget", action="store_true",
                     help="end the cosine schedule when --time-budget-min runs out, if that comes before "
                          "--steps (a one-shot run to a deadline; leave it off for a run resumed across "
                          "invocations, whose schedule must follow the steps)")
    run.add_argument("--save-every", type=positive_int, default=50, help="steps between resumable saves")
    run.add_argument("--eval-every", type=positive_int, default=100, help="steps between validation runs")
    run.add_argument("--val-users", type=positive_int, default=200, help="validation users per validation run")
    run.add_argument("--fresh", action="store_true", help="ignore a saved state in --run-dir and start over")


def add_validity_shape_arguments(p: argparse.ArgumentParser, against: bool = True) -> None:
    """The validity term's margin (CFT, OPD) and, where each output has a target to weigh the banned slots
    against (CFT), what they are weighed against; ``--validity-weight`` is each stage's own flag."""
    p.add_argument("--validity-margin", type=non_negative, default=0.0,
                   help="with --validity-weight: the banned slots' logits raised by this much inside the validity "
                        "term, so that its pull stays until their share is below about exp(-margin) (0: the term "
                        "as is, whose pull fades with the banned mass)")
    if against:
        p.add_argument("--validity-against", choices=AGAINST, default="allowed",
                       help="what the banned slots are weighed against: every allowed token (-log P(allowed)), or "
                            "the target alone, so that the term cannot be paid by ending or breaking the answer")


def validity_term(args: argparse.Namespace) -> ValidityTerm:
    """The validity term the flags of :func:`add_validity_shape_arguments` and ``--validity-weight`` ask for."""
    return ValidityTerm(args.validity_weight, args.validity_margin, getattr(args, "validity_against", "allowed"))


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with no parameter requiring gradients (teachers, reference policies)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class HiddenStates(torch.nn.Module):
    """DDP synchronises gradients through ``forward``: route it to the hidden states, so each loss
    computes logits only at the positions it needs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, positions=None, mask=None):
        return self.model.hidden_states(ids, positions=positions, mask=mask)


@dataclass
class Stage:
    """One recipe stage as the loop sees it. ``loss(step, hidden)`` returns this rank's share of the
    global-batch loss (already divided by the global weight); ``validate()`` returns metrics with at
    least ``ndcg@10`` and ``valid_raw``; ``publish(metrics, steps)`` stores the result and returns its path."""

    name: str
    model: torch.nn.Module
    loss: Callable[[int, Callable], torch.Tensor]
    validate: Callable[[], dict]
    publish: Callable[[dict, int], Path]


MAX_SKIPPED_IN_A_ROW = 10  # non-finite gradient steps in a row before a stage is declared broken
# what the log keeps of a validation's unconstrained decode (the curve of learned validity)
UNCONSTRAINED_KEYS = ("ndcg@10", "ndcg@10_before_repair", "valid_raw", "invalid_raw", "tokens_per_forward",
                      "banned_mass")


class StageNotTraining(RuntimeError):
    """Every recent step had a non-finite gradient: the weights are not moving, so nothing is published."""


def run_stage(stage: Stage, args: argparse.Namespace, d: Dist, steps: int, lr: float, warmup: int = 30) -> Path | None:
    """The training loop every stage shares: resume, schedule, clip, log, validate, save, publish.

    A step whose gradient is non-finite is skipped (logged with ``"skipped": true``); after
    ``MAX_SKIPPED_IN_A_ROW`` in a row the stage stops with :class:`StageNotTraining` instead of
    publishing weights that never trained."""
    model = stage.model
    device = next(model.parameters()).device  # the stage placed it (training_device); teachers too
    model.train()
    # bf16 autocast where it pays: on CUDA; on this project's CPU it slowed the backward (docs/recipe.md)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    run_dir = RunDir(args.run_dir, d.main)
    state = None if args.fresh else run_dir.load_state()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        run_dir.rewind_log(start)
        if d.main:
            print(f"resuming {args.run_dir} at step {start}", flush=True)
    hidden = DDP(HiddenStates(model), device_ids=[device] if device.type == "cuda" else None) \
        if d.world > 1 else model.hidden_states
    t_start = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"train {stage.name}", disable=not d.main,
               dynamic_ncols=True)
    step = start
    last_val: tuple[int, dict] | None = None  # (step, metrics): publishing reuses a final validation
    skipped_in_a_row = skipped = 0
    budget_s = (args.time_budget_min or 0) * 60

    def spent() -> float:  # fraction of the time budget used, the ranks' mean (so they agree on it)
        if not budget_s:
            return 0.0
        return d.sum(torch.tensor(time.time() - t_start, device=device)).item() / d.world / budget_s

    time_fraction = 0.0  # measured once per step, after it: it stops the run and sets the next lr
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup, time_fraction if args.schedule_to_budget else 0.0)
        with autocast:
            loss = stage.loss(step, hidden)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        finite = bool(torch.isfinite(d.sum(grad_norm.detach().clone())))  # every rank skips alike
        if finite:
            opt.step()
        skipped_in_a_row = 0 if finite else skipped_in_a_row + 1
        skipped += not finite
        loss_value = d.sum(loss.detach().clone()).item() / d.world  # ranks hold world-scaled shares
        bar.set_postfix(loss=f"{loss_value:.4f}", **({"skipped": skipped} if skipped else {}))
        record = {"stage": stage.name, "step": step + 1, "loss": round(loss_value, 5), "lr": round(g["lr"], 7)}
        if not finite:
            record["skipped"] = True
        if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            run_dir.log(record)
            raise StageNotTraining(f"{stage.name}: {skipped_in_a_row} steps in a row had a non-finite gradient "
                                   f"(up to step {step + 1}, loss {loss_value:.4g}); nothing published")
        time_fraction = spent()
        done = step + 1 == steps or time_fraction >= 1.0
        if d.main and ((step + 1) % args.eval_every == 0 or done):
            model.eval()
            val = stage.validate()
            last_val = (step + 1, val)
            model.train()
            record.update({"val_ndcg@10": val["ndcg@10"], "val_valid_raw": val["valid_raw"],
                           "val_tokens_per_forward": val.get("tokens_per_forward"), "val_trace": val.get("trace")})
            # a stage's own figures about its recent training steps (RL: mean reward, groups with no spread)
            record.update({k: v for k, v in val.items() if k.startswith("train_")})
            if free := val.get("unconstrained"):
                record["val_unconstrained"] = {k: free.get(k) for k in UNCONSTRAINED_KEYS}
            free_note = f" unconstrained valid {free['valid_raw']:.3f}" if free else ""
            bar.write(f"step {step + 1}: loss {loss_value:.4f} val ndcg@10 {val['ndcg@10']:.4f} "
                      f"valid {val['valid_raw']:.3f}{free_note}")
        run_dir.log(record)
        if (step + 1) % args.save_every == 0 or done:
            run_dir.save_state({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1})
        if done:
            break
    bar.close()
    path = None
    if d.main:
        model.eval()
        final = last_val[1] if last_val and last_val[0] == step + 1 else stage.validate()
        path = stage.publish(final, step + 1)
        print(f"saved {path}", flush=True)
    d.barrier()
    return path
