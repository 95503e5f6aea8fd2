"""Batches built in worker processes are the batches built inline, in step order, and a training
run gives the same losses either way."""

import argparse
import json

import pytest
import torch

from dgr2.recipe import train_ar
from dgr2.recipe.prefetch import Prefetcher


def make(step: int):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(3, generator=gen), torch.full((2,), step)


def test_prefetched_batches_equal_inline_ones_in_order():
    fetched = Prefetcher(make, stop=17, workers=2)  # a resumed run: the first step asked for is 5
    for step in range(5, 17):
        got, want = fetched.get(step), make(step)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_out_of_order_request_is_an_error():
    fetched = Prefetcher(make, stop=4, workers=2)
    fetched.get(0)
    with pytest.raises(RuntimeError, match="step 1 where step 2"):
        fetched.get(2)


def test_ar_training_with_loader_workers_matches_inline(tmp_path):
    losses = {}
    for workers in (0, 2):
        p = argparse.ArgumentParser()
        train_ar.add_arguments(p)
        args = p.parse_args(["--synthetic", "--candidates", "5", "--trace-len", "12", "--preset", "tiny",
                             "--steps", "4", "--eval-every", "100", "--val-users", "5", "--batch-size", "4",
                             "--run-dir", str(tmp_path / f"ar{workers}"), "--store", str(tmp_path / f"s{workers}"),
                             "--loader-workers", str(workers)])
        assert train_ar.run(args) == 0
        losses[workers] = [json.loads(line)["loss"] for line in (tmp_path / f"ar{workers}" / "log.jsonl").open()]
    assert len(losses[0]) == 4 and losses[0] == losses[2]


def test_cuda_device_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA")
    p = argparse.ArgumentParser()
    train_ar.add_arguments(p)
    args = p.parse_args(["--synthetic", "--device", "cuda", "--run-dir", str(tmp_path / "ar")])
    with pytest.raises(SystemExit, match="no CUDA device"):
        train_ar.run(args)
