"""Smoke test: each kernel benchmark runs on CPU (reference paths) and writes its JSON. No timing asserted."""

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("op", ["unmask_select", "answer_scores", "block_attention"])
def test_kernel_benchmark_writes_json(tmp_path, op):
    out = tmp_path / f"{op}.json"
    run = subprocess.run([sys.executable, "-m", f"dgr2.bench.kernels.bench_{op}", "--reps", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    assert op in result["ops"]
