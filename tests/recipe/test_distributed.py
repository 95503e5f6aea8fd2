"""The recipe under ``torchrun``: 2 CPU processes (gloo) take the same steps as one process."""

import os
import subprocess
import sys

import pytest
import torch

ARGS = ["train", "ar", "--synthetic", "--preset", "tiny", "--steps", "4", "--batch-size", "4", "--candidates", "5",
        "--trace-len", "8", "--eval-every", "100", "--val-users", "4", "--fresh"]


def run(cmd, tmp, tag):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*cmd, *ARGS, "--run-dir", str(tmp / tag), "--store", str(tmp / f"store-{tag}")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return torch.load(tmp / tag / "state.pt", weights_only=False)["model"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, need):
    torchrun = need.binary("torchrun", "make install (torchrun comes with torch)")
    one = run([sys.executable, "-m", "dgr2"], tmp_path, "one")
    two = run([torchrun, "--nproc-per-node", "2", "-m", "dgr2"], tmp_path, "two")
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-5, worst
