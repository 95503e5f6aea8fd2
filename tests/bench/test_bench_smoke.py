"""Smoke tests: ``dgr2 bench decode`` and ``dgr2 bench service`` run on the tiny synthetic model for a few
seconds and print JSON with the documented fields. No timing is asserted."""

from __future__ import annotations

import json

import pytest
import torch

from dgr2.bench.decode import Group, plan
from dgr2.bench.service_load import batch_totals
from dgr2.cli import main as cli
from dgr2.model_store import ModelStore
from dgr2.model_store.init import init_pair

RUN_FIELDS = {"decoder", "output_length", "batch_size", "block_size", "threshold", "tokens_per_s", "requests_per_s",
              "tokens_per_forward", "p50_ms", "p99_ms", "peak_mem_mb", "ndcg@10", "forward_passes"}
SPEEDUP_FIELDS = {"output_length", "batch_size", "block_size", "threshold", "ratio"}
LEVEL_FIELDS = {"decoder", "concurrency", "requests_per_s", "p50_ms", "p95_ms", "p99_ms", "mean_batch_size",
                "errors", "speedup_vs_c1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, catalog) -> str:
    root = tmp_path_factory.mktemp("bench-store")
    init_pair(ModelStore(root), "beauty-gr2", catalog, "tiny", seed=0)
    return str(root)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def common(store: str) -> list[str]:
    return ["--store", store, "--synthetic", "--torch-threads", "1", "--trace-len", "8", "--json"]


def test_decode_quick_prints_one_json_object(store, capsys):
    assert cli(["bench", "decode", *common(store), "--quick", "--requests", "1", "--repeats", "1",
                "--ndcg-users", "4"]) == 0
    out = json.loads(capsys.readouterr().out)  # the whole of stdout is one object
    assert set(out) == {"machine", "runs", "speedup"}
    assert out["machine"]["device"] == "cpu" and out["machine"]["peak_mem"] and not out["machine"]["incomplete"]
    assert [r["decoder"] for r in out["runs"]] == ["ar", "diffusion"]
    for r in out["runs"]:
        assert set(r) >= RUN_FIELDS
        assert r["output_length"] is None and r["stop"] == "natural" and r["batch_size"] == 1
        assert r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 and 0.0 <= r["ndcg@10"] <= 1.0
        t = r["pass_time_ms"]  # where a pass's time goes, from one clocked decode
        assert t["total"] > 0 and abs(t["network"] + t["head"] + t["decoder"] - t["total"]) < 1e-2
    assert out["runs"][0]["tokens_per_forward_trace"] == 1.0  # AR: one token a pass in every section
    assert out["runs"][1]["block_size"] == 32 and out["runs"][1]["threshold"] == 0.9
    assert set(out["machine"]["decode_settings"]["diffusion"]) >= {"block_size", "answer_claims", "block_cache"}
    assert {"cpu", "torch_threads", "torch", "python"} <= set(out["machine"])
    (s,) = out["speedup"]
    assert set(s) >= SPEEDUP_FIELDS and s["ratio"] > 0


def test_decode_sweep_fixed_lengths_plot_and_out(store, tmp_path, capsys):
    png, saved = tmp_path / "plot.png", tmp_path / "decode.json"
    assert cli(["bench", "decode", *common(store), "--lengths", "32,64", "--batch-sizes", "1,2", "--block-sizes",
                "8,16", "--thresholds", "0.5", "--requests", "2", "--repeats", "1", "--ndcg-users", "2",
                "--plot", str(png), "--out", str(saved)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert json.loads(saved.read_text()) == out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fixed = [r for r in out["runs"] if r["output_length"] is not None]
    assert {(r["decoder"], r["output_length"], r["batch_size"]) for r in fixed} == \
        {(d, L, b) for d in ("ar", "diffusion") for L in (32, 64) for b in (1, 2)}
    for r in fixed:  # the stop is ignored: every request generates exactly L tokens
        assert r["stop"] == "ignored" and r["generated_tokens_mean"] == r["output_length"]
    # the default point (the checkpoint's block 32 and threshold 0.9) with the block and threshold sweeps
    # at the first batch size, and the default point again at the other batch size
    natural = {(r["decoder"], r["batch_size"], r["block_size"], r["threshold"])
               for r in out["runs"] if r["output_length"] is None}
    assert natural == {("ar", 1, None, None), ("diffusion", 1, 32, 0.9), ("diffusion", 1, 8, 0.9),
                       ("diffusion", 1, 16, 0.9), ("diffusion", 1, 32, 0.5), ("ar", 2, None, None),
                       ("diffusion", 2, 32, 0.9)}
    assert len(out["speedup"]) == len([r for r in out["runs"] if r["decoder"] == "diffusion"])


def test_decode_refuses_a_length_the_blocks_cannot_hit(store):
    with pytest.raises(SystemExit, match="not a multiple of the block size"):
        cli(["bench", "decode", *common(store), "--lengths", "20", "--batch-sizes", "1", "--block-sizes", "",
             "--thresholds", ""])


def test_plan_puts_the_default_point_first():
    groups = plan(False, [64, 128], [1, 8], [8, 32], [0.7, 0.9], 32, 0.9)
    assert groups[0] == Group(None, 1, [(32, 0.9), (8, 0.9), (32, 0.7)])
    assert [(g.length, g.batch) for g in groups[1:]] == [(64, 1), (64, 8), (128, 1), (128, 8), (None, 8)]
    assert plan(True, [64], [8], [8], [0.7], 32, 0.9) == [Group(None, 1, [(32, 0.9)])]


def test_batch_totals_reads_one_decoder():
    text = "\n".join([
        "# TYPE dgr2_batch_size histogram",
        'dgr2_batch_size_bucket{decoder="ar",le="1.0",model="m"} 2.0',
        'dgr2_batch_size_sum{decoder="ar",model="m"} 12.0',
        'dgr2_batch_size_count{decoder="ar",model="m"} 4.0',
        'dgr2_batch_size_sum{decoder="diffusion",model="m"} 3.0',
        'dgr2_batch_size_count{decoder="diffusion",model="m"} 3.0',
    ])
    assert batch_totals(text, "ar") == (12.0, 4.0)
    assert batch_totals(text, "diffusion") == (3.0, 3.0)


def test_service_bench_runs_the_real_server(store, capsys):
    assert cli(["bench", "service", "--store", store, "--synthetic", "--torch-threads", "1", "--concurrency", "1,2",
                "--duration", "1", "--users", "4", "--max-new-tokens", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"machine", "server", "runs", "overhead"}
    assert {(r["decoder"], r["concurrency"]) for r in out["runs"]} == \
        {(d, c) for d in ("ar", "diffusion") for c in (1, 2)}
    for r in out["runs"]:
        assert set(r) >= LEVEL_FIELDS
        assert r["errors"] == 0 and r["requests_per_s"] > 0 and r["mean_batch_size"] >= 1
    for o in out["overhead"]:
        assert {"decoder", "raw_decode_p50_ms", "c1_p50_ms", "overhead_ms", "overhead_pct"} <= set(o)


def test_profile_decode_splits_each_decoders_time(store, tmp_path):
    from dgr2.bench.profile_decode import main as profile

    out = tmp_path / "profile.txt"
    assert profile(["--store", store, "--synthetic", "--torch-threads", "1", "--trace-len", "8", "--users", "2",
                    "--out", str(out)]) == 0
    text = out.read_text()
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()[:1] in (["ar"], ["diffusion"])}
    assert set(rows) == {"ar", "diffusion"}
    for cols in rows.values():  # network + head + decoder shares of the wall time add up to ~100%
        assert abs(sum(int(c.rstrip("%")) for c in cols[7:10]) - 100) <= 2
    assert rows["ar"][4:6] == ["1.00", "1.00"]  # AR decides one token a pass in either section
    assert "diffusion/AR: throughput" in text and text.count("top operators") == 2


def test_without_data_the_benchmarks_refuse_by_name(monkeypatch, capsys):
    """No silent fallback to synthetic prompts that the shipped models were never trained on."""
    monkeypatch.delenv("DGR2_DATA_DIR", raising=False)
    for argv in (["bench", "decode", "--quick"], ["bench", "service", "--concurrency", "1"]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert "no data folder" in err and "--synthetic" in err, err
